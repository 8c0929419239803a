"""Run a DAG once with Airflow's ``dag.test()``, in a child process.

Airflow reads its configuration (AIRFLOW_HOME, dags folder, metadata DB) once per process at import, so
the caller never imports Airflow itself: the child gets ``LocalAirflow(settings).env()``.  Used by the demo
(the retrain step runs through the real DAG) and by the DAG tests.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

DAG_TEST = """
import json, os
from datetime import datetime
from pathlib import Path
from airflow.dag_processing.dagbag import BundleDagBag
from airflow.models.taskinstance import TaskInstance
from airflow.models.xcom import XComModel
from airflow.utils.session import create_session

dags = Path({dags!r})
dag = BundleDagBag(dag_folder=dags / {file!r}, bundle_path=dags).get_dag({dag_id!r})
results = []
for run in {runs!r}:
    os.environ.update(run.get("env", {{}}))  # tasks run in this process and build Settings() from it
    logical = run.get("logical_date")
    dr = dag.test(logical_date=datetime.fromisoformat(logical) if logical else None, run_conf=run.get("conf") or {{}})
    with create_session() as session:
        tis = session.query(TaskInstance).filter_by(dag_id=dr.dag_id, run_id=dr.run_id).all()
        states = {{ti.task_id: getattr(ti.state, "value", ti.state) for ti in tis}}
        durations = {{ti.task_id: ti.duration for ti in tis if ti.duration is not None}}
        # the run's wall time from its tasks (a dag.test() run's own start date is its logical date)
        starts, ends = [ti.start_date for ti in tis if ti.start_date], [ti.end_date for ti in tis if ti.end_date]
        seconds = (max(ends) - min(starts)).total_seconds() if starts and ends else None
        xcoms = session.scalars(XComModel.get_many(run_id=dr.run_id, dag_ids=dr.dag_id, key="return_value")).all()
        returned = {{x.task_id: XComModel.deserialize_value(x) for x in xcoms}}
    results.append({{"state": str(getattr(dr.state, "value", dr.state)), "run_id": dr.run_id, "tasks": states,
                    "results": returned, "task_seconds": durations,
                    "seconds": seconds}})
print(json.dumps({{"runs": results}}, default=str))
"""


def run_airflow_python(settings, code: str, timeout: float = 600, log_name: str = "airflow-python") -> dict:
    """Run ``code`` with the Airflow environment of ``settings``; it prints one JSON object last.
    Its output is kept in ``<state_dir>/<log_name>.log``."""
    from cli.local.airflow import LocalAirflow

    local = LocalAirflow(settings, postgres=False)
    local.write_config()
    r = subprocess.run([sys.executable, "-c", code], env=local.env(), capture_output=True, text=True,
                       timeout=timeout, cwd=local.home)
    log = Path(settings.state_dir) / f"{log_name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as f:
        f.write(r.stdout + r.stderr)
    if r.returncode != 0:
        raise RuntimeError(f"airflow subprocess failed ({r.returncode}), log {log}:\n{r.stderr[-4000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def ensure_migrated(settings) -> None:
    """``airflow db migrate`` once per AIRFLOW_HOME (dag.test() needs the metadata tables)."""
    from cli.local.airflow import LocalAirflow

    local = LocalAirflow(settings, postgres=False)
    marker = Path(local.home) / ".sassflow-migrated"
    if not marker.exists():
        Path(local.home).mkdir(parents=True, exist_ok=True)
        r = local.airflow("db", "migrate")
        if r.returncode != 0:
            raise RuntimeError(f"airflow db migrate failed:\n{r.stdout[-2000:]}{r.stderr[-2000:]}")
        marker.write_text("ok")


def dag_test_runs(settings, dag_id: str, runs: list[dict], timeout: float = 900) -> list[dict]:
    """``dag.test()`` runs of one DAG, one after the other in one subprocess (Airflow starts once).

    Each run is {"conf": {...}, "logical_date": iso str, "env": {extra variables from now on}};
    returns per run {"state", "run_id", "tasks": {task_id: state}, "results": {task_id: its return value},
    "task_seconds": {task_id: how long it ran}, "seconds": its first task's start to its last task's end}
    (the tasks' ``return_value`` XComs: how a caller learns what a run produced)."""
    from cli.local.airflow import DAGS_FOLDER

    ensure_migrated(settings)
    code = DAG_TEST.format(dags=str(DAGS_FOLDER), file=f"{dag_id}.py", dag_id=dag_id, runs=runs)
    return run_airflow_python(settings, code, timeout=timeout, log_name=f"dag_test-{dag_id}")["runs"]


def dag_test(settings, dag_id: str, conf: dict | None = None, logical_date: str | None = None,
             timeout: float = 900) -> dict:
    """One ``dag.test()`` run: {"state", "run_id", "tasks": {task_id: state}, "results": {task_id: value}}."""
    return dag_test_runs(settings, dag_id, [{"conf": conf or {}, "logical_date": logical_date}], timeout)[0]
