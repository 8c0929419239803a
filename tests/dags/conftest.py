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

from cli.local.airflow import LocalAirflow
from cli.local.dagrun import ensure_migrated
from sassflow.processes import free_port
from tests.conftest import make_settings


# A few seconds of training on the tests' small synthetic data.
# A test-speed budget, pinned whole: stage 1 one epoch (min_pretrain_steps 0), stage 2 two. The DAG
# tests need a candidate that beats popularity on 6 000 events; with this tiny model, stretching
# stage 1 to 100 steps (one step per epoch here) lost to popularity on their data.
SMALL_TRAINING = {"embedding_dim": 16, "hidden_dims": [32], "pretrain_epochs": 1, "finetune_epochs": 2,
                  "batch_size": 256, "min_pretrain_steps": 0}


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
    # the content tower and the rankers have their own DAG tests (dag.test); here they are off, so
    # the scheduler's three trainings stay short
    settings = make_settings(root / "state", airflow={"port": free_port(), "postgres_port": free_port()},
                             training=SMALL_TRAINING, content={"enabled": False}, ranking={"enabled": False})
    local = LocalAirflow(settings, postgres=True)
    try:
        local.up()
        yield local
    finally:
        try:
            local.down()
        finally:
            shutil.rmtree(root, ignore_errors=True)
