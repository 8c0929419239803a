"""DAG hygiene: the DAG files parse without errors or cycles, import fast, document themselves in
Markdown with a description, give every heavy task a pool and a timeout, and reject bad confs."""
from __future__ import annotations

import re

import pytest

from tests.conftest import make_settings
from cli.local.dagrun import run_airflow_python

HYGIENE = r"""
import copy, json, time, importlib.util, sys
from pathlib import Path
import airflow.sdk  # Airflow itself is loaded once by the dag-processor; we time the DAG files on top of it
from airflow.dag_processing.dagbag import BundleDagBag
from airflow.sdk.exceptions import ParamValidationError

dags = Path(__import__("cli.local.airflow", fromlist=["x"]).DAGS_FOLDER)
sys.path.insert(0, str(dags))
import_s = {}
for f in ("sass_retrain.py", "sass_backfill.py"):
    t0 = time.perf_counter()
    spec = importlib.util.spec_from_file_location(f[:-3] + "_timed", dags / f)
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
    import_s[f] = round(time.perf_counter() - t0, 3)

bag = BundleDagBag(dag_folder=dags, bundle_path=dags)
cycles = {}
for dag_id, dag in bag.dags.items():
    try:
        dag.check_cycle(); cycles[dag_id] = None
    except Exception as exc:
        cycles[dag_id] = str(exc)

def rejects(dag_id, conf):
    try:
        params = copy.deepcopy(bag.dags[dag_id].params)  # as the API server does with a trigger's conf
        params.update(conf)
        params.validate()
        return None
    except ParamValidationError as exc:
        return str(exc).splitlines()[0]

from types import SimpleNamespace
from _common import check_conf, decision_summary, window_from_params
def conf_error(dag_id, conf):
    try:
        check_conf({"dag": bag.dags[dag_id], "dag_run": SimpleNamespace(conf=conf)}); return None
    except Exception as exc:
        return str(exc)

def window_error(conf):
    try:
        window_from_params(conf); return None
    except ValueError as exc:
        return str(exc)

ok = {"start": "2024-01-01", "end": "2024-01-07"}
print(json.dumps({
    "import_errors": {k: str(v) for k, v in bag.import_errors.items()},
    "dags": {d: sorted(t.task_id for t in dag.tasks) for d, dag in bag.dags.items()},
    "schedule": {d: str(dag.schedule) for d, dag in bag.dags.items()},
    "cycles": cycles, "import_s": import_s,
    "valid": rejects("sass_backfill", ok),
    "retrain_defaults": rejects("sass_retrain", {}),
    "unknown_scenario": rejects("sass_backfill", {**ok, "scenarios": ["casino"]}),
    "bad_date": rejects("sass_backfill", {**ok, "end": "2024-13-40"}),
    "missing_start": rejects("sass_backfill", {"end": "2024-01-07"}),
    "bad_flag": rejects("sass_backfill", {**ok, "retrain": "yes"}),
    "end_before_start": window_error({"start": "2024-01-07", "end": "2024-01-01"}),
    "window": window_from_params({**ok, "scenarios": ["drama"]}),
    "misspelled_key": conf_error("sass_backfill", {**ok, "retrian": True}),
    "known_keys": conf_error("sass_backfill", {**ok, "retrain": True}),
    "description": {d: dag.description for d, dag in bag.dags.items()},
    "doc_md": {d: dag.doc_md for d, dag in bag.dags.items()},
    "tasks": {d: {t.task_id: {"pool": t.pool, "timeout_s": t.execution_timeout and t.execution_timeout.total_seconds(),
                              "outlets": [type(o).__name__ for o in t.outlets]} for t in dag.tasks}
              for d, dag in bag.dags.items()},
    "summary": decision_summary({"version": 3, "promoted": False, "reason": "worse than the champion",
                                 "metrics": {"candidate": 0.41, "champion": 0.45, "popularity": 0.39}}),
}))
"""


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    home = tmp_path_factory.mktemp("hygiene")
    return run_airflow_python(make_settings(home / "state", airflow={"home": home}), HYGIENE)


def test_dagbag_has_both_dags_without_import_errors_or_cycles(report):
    assert report["import_errors"] == {}
    assert set(report["dags"]) == {"sass_retrain", "sass_backfill"}
    assert report["cycles"] == {"sass_retrain": None, "sass_backfill": None}
    chain = ["retrain.build_training_set", "retrain.pretrain", "retrain.finetune",
             "retrain.evaluate", "retrain.quality_gate", "retrain.build_bundle", "retrain.publish"]
    assert set(chain) | {"training_window"} <= set(report["dags"]["sass_retrain"])
    assert set(chain) | {"replay_features"} <= set(report["dags"]["sass_backfill"])
    assert report["schedule"]["sass_retrain"] == "@daily"


def test_dag_files_import_fast(report):
    print("DAG file import seconds:", report["import_s"])
    assert all(s < 2.0 for s in report["import_s"].values()), report["import_s"]


def test_params_accept_a_good_conf_and_reject_bad_ones(report):
    assert report["valid"] is None and report["retrain_defaults"] is None
    assert "casino" in report["unknown_scenario"]
    assert report["bad_date"] and report["missing_start"] and report["bad_flag"]
    assert "before start" in report["end_before_start"]
    start_ms, end_ms, scenarios = report["window"]
    assert (start_ms, end_ms, scenarios) == (1704067200000, 1704672000000, ["drama"])  # end day inclusive
    assert "['retrian']" in report["misspelled_key"] and "'retrain'" in report["misspelled_key"]
    assert report["known_keys"] is None


def test_dags_document_themselves_in_markdown_with_a_description(report):
    for dag_id, doc in report["doc_md"].items():
        assert report["description"][dag_id], dag_id
        assert doc.lstrip().startswith(f"# {dag_id}") and "| Param |" in doc, dag_id  # a heading, a Params table
        assert not re.search(r"``[^`\n]+``", doc), dag_id  # no RST literals


HEAVY = ["build_training_set", "pretrain", "finetune", "evaluate", "quality_gate", "build_bundle", "publish"]


def test_heavy_tasks_share_the_training_pool_and_have_a_timeout(report):
    tasks = report["tasks"]
    for dag_id in ("sass_retrain", "sass_backfill"):
        for name in HEAVY:
            t = tasks[dag_id][f"retrain.{name}"]
            assert t["pool"] == "sassflow_training" and t["timeout_s"] == 180 * 60, (dag_id, name, t)
        assert tasks[dag_id]["retrain.publish"]["outlets"] == ["AssetAlias"]  # emits the Asset only for a new bundle
    assert tasks["sass_backfill"]["replay_features"]["pool"] == "sassflow_training"


def test_the_gate_summary_shows_the_decision_and_every_number(report):
    assert report["summary"] == ("candidate v3 rejected: worse than the champion "
                                 "[metrics.candidate 0.4100, metrics.champion 0.4500, metrics.popularity 0.3900]")
