"""A child process's environment: the given settings, and no Prometheus multiprocess folder inherited."""
from __future__ import annotations

from sassflow.processes import PROMETHEUS_DIR_VARIABLES, child_env
from tests.conftest import make_settings


def test_a_child_does_not_inherit_the_parents_prometheus_folder(tmp_path, monkeypatch):
    import feast.metrics  # noqa: F401 -- importing feast points these at a folder of this process

    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    env = child_env(make_settings(tmp_path))
    assert not set(PROMETHEUS_DIR_VARIABLES) & set(env)
    assert env["SASSFLOW_STATE_DIR"] == str(tmp_path.absolute())
