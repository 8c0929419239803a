"""A real Airflow (api-server, scheduler, dag-processor; LocalExecutor; PostgreSQL metadata DB on
loopback), driven as an operator would: through the REST API v2, `airflow backfill create` and a bare
`airflow` CLI configured only by the files `up` wrote.

- ``sass_backfill`` with a conf replays a scenario-limited window into the online store (touched keys
  = the full recomputation), a misspelled conf key fails at once listing the valid ones, and an empty
  window ends as a skip that says so;
- unpausing ``sass_retrain`` on a history far behind the clock trains in data time (green), with the
  per-epoch loss at info and the gate's decision in an XCom;
- ``airflow backfill create`` over two dates (Airflow's default: 10 runs at once) never runs two heavy
  tasks at once, leaves one promoted model whose bundle is ``CURRENT``, and emits one Asset event per
  published bundle; clearing a finished publish emits nothing more.

The tests run in file order and share one Airflow (module scope).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import pytest

from tests.serving.conftest import wait_for

HEAVY = ("retrain.build_training_set", "retrain.pretrain", "retrain.finetune", "retrain.evaluate",
         "retrain.quality_gate", "retrain.build_bundle", "retrain.publish", "replay_features")


@pytest.fixture(scope="module")
def api(real_airflow):
    """A REST API v2 client with a JWT from ``POST /auth/token`` (closed before Airflow stops)."""
    with real_airflow.client() as client:
        yield client


@pytest.fixture(scope="module")
def history(real_airflow):
    """~3.5 days of synthetic events (November 2023: far behind the clock) in the offline history."""
    from streaming.history import append_history
    from streaming.sources import SyntheticSource, events_frame

    settings = real_airflow.settings
    source = SyntheticSource(n_users=60, n_items=300, n_events=3000, scenarios=settings.scenarios, seed=3,
                             mean_gap_ms=600_000)
    df = events_frame(source.events())
    append_history(settings.streaming.offline_dir, df, name="synthetic-3")
    return df


def _day(ms: int):
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).date()


def _trigger(api, dag_id, conf) -> str:
    r = api.post(f"/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": conf})
    assert r.status_code == 200, r.text
    return r.json()["dag_run_id"]


def _finished(api, dag_id, run_id, timeout=300) -> str:
    return wait_for(lambda: (s := api.get(f"/dags/{dag_id}/dagRuns/{run_id}").json().get("state"))
                    in ("success", "failed") and s, timeout, interval=1.0)


def _tasks(api, dag_id, run_id) -> dict:
    return {t["task_id"]: t for t in api.get(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances",
                                              params={"limit": 100}).json()["task_instances"]}


def _xcom(api, dag_id, run_id, task_id, key="return_value"):
    r = api.get(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/{key}",
                params={"deserialize": True})
    return r.json()["value"] if r.status_code == 200 else None


def _log(api, dag_id, run_id, task_id, try_number=1) -> str:
    r = api.get(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{try_number}",
                headers={"Accept": "application/json"})
    return r.text


def _bundle_events(api) -> list:
    return api.get("/assets/events", params={"source_dag_id": "sass_retrain", "limit": 100}).json()["asset_events"]


def test_backfill_dag_through_the_rest_api(real_airflow, api, history):
    from features.store import OnlineWriter, build_store
    from streaming.history import read_history
    from streaming.replay import compare_online, recompute

    settings, dag_id = real_airflow.settings, "sass_backfill"
    wait_for(lambda: api.get(f"/dags/{dag_id}").status_code == 200, 120, interval=1.0)
    dag = api.get(f"/dags/{dag_id}/details").json()
    assert dag["description"] and dag["doc_md"].lstrip().startswith("# sass_backfill")
    assert api.patch(f"/dags/{dag_id}", json={"is_paused": False}).status_code == 200

    first_day = _day(int(history["event_time"].min()))
    start, end = first_day.isoformat(), (first_day + timedelta(days=1)).isoformat()
    scenarios = settings.scenarios[1:4]

    bad = api.post(f"/dags/{dag_id}/dagRuns", json={"logical_date": None,
                                                     "conf": {"start": start, "end": end, "scenarios": ["casino"]}})
    assert bad.status_code == 400 and "casino" in bad.text  # Params validation happens at trigger time

    misspelled = _trigger(api, dag_id, {"start": start, "end": end, "retrian": True})
    assert _finished(api, dag_id, misspelled) == "failed"
    assert _tasks(api, dag_id, misspelled)["backfill_window"]["state"] == "failed"
    log = _log(api, dag_id, misspelled, "backfill_window")
    assert "unknown conf keys ['retrian']" in log and "'recompute_features'" in log

    empty = _trigger(api, dag_id, {"start": "2001-01-01", "end": "2001-01-02"})
    assert _finished(api, dag_id, empty) == "success"
    assert _tasks(api, dag_id, empty)["replay_features"]["state"] == "skipped"
    assert "no events in 2001-01-01..2001-01-02" in _log(api, dag_id, empty, "replay_features")

    run_id = _trigger(api, dag_id, {"start": start, "end": end, "scenarios": scenarios,
                                    "recompute_features": True, "retrain": False})
    assert _finished(api, dag_id, run_id) == "success"
    tasks = {t: i["state"] for t, i in _tasks(api, dag_id, run_id).items()}
    assert tasks["replay_features"] == "success" and tasks["retrain_requested"] == "success", tasks
    assert {s for t, s in tasks.items() if t.startswith("retrain.")} == {"skipped"}  # retrain=false

    replayed = _xcom(api, dag_id, run_id, "replay_features")
    window = read_history(settings.streaming.offline_dir, replayed["start_ms"], replayed["end_ms"], scenarios)
    assert 0 < len(window) < len(history) and replayed["events"] == len(window)
    assert set(window["scenario"]) <= set(scenarios)

    # Every key the window touched holds its present row (the whole history's); no other key was written.
    written = sum(v["written"] for v in replayed["views"].values())
    check = compare_online(OnlineWriter(build_store(settings)), recompute(read_history(settings.streaming.offline_dir),
                                                                          settings.scenarios))
    assert written > 0 and check["mismatched"] == 0 and check["missing"] == check["keys"] - written, check


def test_unpausing_the_retrain_dag_on_an_old_history_trains_in_data_time(real_airflow, api, history):
    from training.registry import ModelRegistry

    wait_for(lambda: api.get("/dags/sass_retrain").status_code == 200, 120, interval=1.0)
    assert api.patch("/dags/sass_retrain", json={"is_paused": False}).status_code == 200

    def scheduled_run():
        runs = api.get("/dags/sass_retrain/dagRuns", params={"run_type": "scheduled"}).json()["dag_runs"]
        return runs if runs and all(r["state"] in ("success", "failed") for r in runs) else None

    runs = wait_for(scheduled_run, 400, interval=2.0)
    assert [r["state"] for r in runs] == ["success"]
    run_id = runs[0]["dag_run_id"]
    tasks = _tasks(api, "sass_retrain", run_id)
    assert {i["state"] for i in tasks.values()} == {"success"}, tasks
    window = _xcom(api, "sass_retrain", run_id, "training_window")
    newest = _day(int(history["event_time"].max()))
    assert window["basis"] == "data time" and newest.isoformat() in window["note"] and "start and end Params" in window["note"]

    finetune_log = _log(api, "sass_retrain", run_id, "retrain.finetune")
    assert "finetune epoch 1/2: mean loss" in finetune_log and "it/s" not in finetune_log  # info lines, no bars
    decision = _xcom(api, "sass_retrain", run_id, "retrain.quality_gate", key="decision")
    assert decision.startswith("candidate v1 promoted")
    assert "gate decision: candidate v1 promoted" in _log(api, "sass_retrain", run_id, "retrain.quality_gate")
    promoted = ModelRegistry(real_airflow.settings.training.registry_url.get_secret_value()).promoted()
    assert promoted.id == 1 and promoted.published
    assert [e["extra"].get("bundle_id") for e in _bundle_events(api)] == [promoted.bundle_id]


def _overlaps(intervals):
    spans = sorted(intervals)
    return [(a, b) for a, b in zip(spans, spans[1:]) if b[0] < a[1]]


def test_airflow_backfill_create_runs_one_heavy_task_at_a_time_and_publishes_once(real_airflow, api, history):
    from serving.bundle import current_bundle_id
    from training.registry import ModelRegistry

    settings = real_airflow.settings
    last_day = _day(int(history["event_time"].max()))
    first, second = (last_day + timedelta(days=1)).isoformat(), (last_day + timedelta(days=2)).isoformat()
    # Airflow's default for a backfill is 10 runs at once, whatever the DAG's max_active_runs says.
    real_airflow.airflow("backfill", "create", "--dag-id", "sass_retrain", "--from-date", first, "--to-date", second)
    run_ids = [f"backfill__{d}T00:00:00+00:00" for d in (first, second)]
    assert [_finished(api, "sass_retrain", r, timeout=600) for r in run_ids] == ["success", "success"]

    all_runs = [r["dag_run_id"] for r in api.get("/dags/sass_retrain/dagRuns").json()["dag_runs"]]
    spans = []
    for run_id in all_runs:
        for task_id, ti in _tasks(api, "sass_retrain", run_id).items():
            if task_id in HEAVY and ti["start_date"] and ti["state"] == "success":
                assert ti["pool"] == "sassflow_training"
                spans.append((datetime.fromisoformat(ti["start_date"]), datetime.fromisoformat(ti["end_date"])))
    assert len(spans) >= 7 + 2 * 5 and _overlaps(spans) == []  # the pool held even across backfill runs

    registry = ModelRegistry(settings.training.registry_url.get_secret_value())
    versions = sorted(registry.list(name="sass"), key=lambda v: v.id)
    assert [v.status for v in versions].count("promoted") == 1
    promoted = registry.promoted()
    assert current_bundle_id(settings) == promoted.bundle_id and promoted.published
    published = [p for r in all_runs if (p := _xcom(api, "sass_retrain", r, "retrain.publish")) and p.get("published")]
    events = _bundle_events(api)
    assert sorted(e["extra"]["bundle_id"] for e in events) == sorted(p["bundle_id"] for p in published)


def test_clearing_a_finished_publish_emits_no_second_asset_event(real_airflow, api, history):
    runs = api.get("/dags/sass_retrain/dagRuns").json()["dag_runs"]
    run_id = next(r["dag_run_id"] for r in runs
                  if (_xcom(api, "sass_retrain", r["dag_run_id"], "retrain.publish") or {}).get("published"))
    before = len(_bundle_events(api))
    r = api.post("/dags/sass_retrain/clearTaskInstances", json={
        "dry_run": False, "only_failed": False, "dag_run_id": run_id, "task_ids": ["retrain.publish"]})
    assert r.status_code == 200, r.text
    wait_for(lambda: _tasks(api, "sass_retrain", run_id)["retrain.publish"]["try_number"] >= 2
             and _finished(api, "sass_retrain", run_id) == "success", 180, interval=1.0)
    assert _tasks(api, "sass_retrain", run_id)["retrain.publish"]["state"] == "success"
    assert "no new Asset event" in _log(api, "sass_retrain", run_id, "retrain.publish", try_number=2)
    assert len(_bundle_events(api)) == before


def test_a_bare_airflow_cli_with_the_written_files_is_this_deployment(real_airflow):
    from cli.local.airflow import DAGS_FOLDER

    env_sh = real_airflow.home / "env.sh"
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "SASSFLOW_"))}

    def bare(*args: str) -> str:
        out = subprocess.run(["bash", "-c", f"source {env_sh} && {sys.executable} -m airflow {' '.join(args)}"],
                             env=clean, capture_output=True, text=True, timeout=300, cwd="/")
        assert out.returncode == 0, out.stderr[-3000:]
        return out.stdout.strip().splitlines()[-1]

    assert bare("config", "get-value", "core", "dags_folder") == str(DAGS_FOLDER)
    dags = {d["dag_id"] for d in json.loads(bare("dags", "list", "-o", "json"))}
    assert {"sass_retrain", "sass_backfill"} <= dags  # read from the PostgreSQL of `up`, not a fresh SQLite
    pools = {p["pool"]: int(p["slots"]) for p in json.loads(bare("pools", "list", "-o", "json"))}
    assert pools["sassflow_training"] == 1
    cfg = (real_airflow.home / "airflow.cfg").read_text()
    assert "sql_alchemy_conn_cmd" in cfg and "password" not in cfg.lower() and "postgresql" not in cfg
