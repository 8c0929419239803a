"""Airflow for the DAG tests, always in subprocesses: Airflow reads its configuration (AIRFLOW_HOME,
dags folder, database) once per process at import, so the pytest process itself never imports it.

- ``airflow_home``: one SQLite AIRFLOW_HOME per session, migrated once, for ``dag.test()`` runs.
- ``real_airflow``: api-server + scheduler + dag-processor, LocalExecutor, metadata in a throwaway local
  PostgreSQL, all on loopback, started once.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from sassflow.airflow_cli import DAGS_FOLDER, LocalAirflow
from sassflow.dagrun import ensure_migrated, run_airflow_python
from sassflow.processes import free_port
from tests.conftest import make_settings


# A few seconds of training on the tests' small synthetic data.
SMALL_TRAINING = {"embedding_dim": 16, "hidden_dims": [32], "pretrain_epochs": 1, "finetune_epochs": 2,
                  "batch_size": 256}


DAG_TEST = """
import json, os
from datetime import datetime
from pathlib import Path
from airflow.dag_processing.dagbag import BundleDagBag
from airflow.models.taskinstance import TaskInstance
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
    results.append({{"state": str(getattr(dr.state, "value", dr.state)), "run_id": dr.run_id, "tasks": states}})
print(json.dumps({{"runs": results}}))
"""


def dag_test_runs(settings, dag_id: str, runs: list[dict], timeout: float = 900) -> list[dict]:
    """``dag.test()`` runs of one DAG, one after the other in one subprocess (Airflow starts once;
    ``sassflow.dagrun.dag_test`` is the single-run version).

    Each run is {"conf": {...}, "logical_date": iso str, "env": {extra variables from now on}};
    returns per run {"state", "run_id", "tasks": {task_id: state}}."""
    code = DAG_TEST.format(dags=str(DAGS_FOLDER), file=f"{dag_id}.py", dag_id=dag_id, runs=runs)
    return run_airflow_python(settings, code, timeout=timeout, log_name=f"dag_test-{dag_id}")["runs"]


@pytest.fixture(scope="session")
def airflow_home(tmp_path_factory) -> Path:
    """A migrated SQLite AIRFLOW_HOME shared by the session's ``dag.test()`` runs."""
    home = tmp_path_factory.mktemp("airflow-home")
    ensure_migrated(make_settings(home / "state", airflow={"home": home}))
    return home


@pytest.fixture(scope="module")
def real_airflow():
    """The three Airflow components + PostgreSQL on free loopback ports, started once (only
    test_real_airflow.py uses them; module scope stops them before the rest of the suite runs).

    State lives under /tmp/sassflow-airflow-*, not pytest's private tmp dir: PostgreSQL runs as the
    ``postgres`` user when the tests run as root, and must be able to reach its data directory."""
    root = Path(tempfile.mkdtemp(prefix="sassflow-airflow-"))
    root.chmod(0o755)
    settings = make_settings(root / "state", airflow={"port": free_port(), "postgres_port": free_port()},
                             training=SMALL_TRAINING)
    local = LocalAirflow(settings, postgres=True)
    try:
        local.up()
        yield local
    finally:
        try:
            local.down()
        finally:
            shutil.rmtree(root, ignore_errors=True)
