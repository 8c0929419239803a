"""The rankers' task group (dags/_ranking.py) wires into a DAG: train then register, both heavy tasks
in the training pool with a timeout."""
from __future__ import annotations

from cli.local.dagrun import run_airflow_python
from tests.conftest import make_settings

WIRE = r"""
import json, sys
from pathlib import Path
from airflow.sdk import DAG, task
dags = Path(__import__("cli.local.airflow", fromlist=["x"]).DAGS_FOLDER)
sys.path.insert(0, str(dags))
from _ranking import ranking

@task
def upstream() -> dict:
    return {}

with DAG("wired", schedule=None) as dag:
    ranking(upstream(), upstream())
tasks = {t.task_id: {"pool": t.pool, "timeout_s": t.execution_timeout and t.execution_timeout.total_seconds(),
                     "upstream": sorted(t.upstream_task_ids)} for t in dag.tasks}
print(json.dumps(tasks))
"""


def test_ranking_task_group_trains_then_registers_in_the_training_pool(tmp_path):
    s = make_settings(tmp_path / "state", airflow={"home": tmp_path / "home", "training_pool": "sassflow_training",
                                                   "task_timeout_minutes": 90})
    tasks = run_airflow_python(s, WIRE)
    train, register = tasks["ranking.train_rankers"], tasks["ranking.register_rankers"]
    assert register["upstream"] == ["ranking.train_rankers"] and len(train["upstream"]) == 2
    for t in (train, register):
        assert t["pool"] == "sassflow_training" and t["timeout_s"] == 90 * 60
