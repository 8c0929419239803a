"""A real Airflow (api-server, scheduler, dag-processor; LocalExecutor; PostgreSQL metadata DB on
loopback): ``sass_backfill`` triggered with a conf through the REST API v2 replays a window of the
offline history into the online store, exactly as a batch recomputation of that window; and
``airflow backfill create`` on ``sass_retrain`` retrains, publishes and emits the bundle Asset."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from tests.serving.conftest import wait_for

DAG_ID = "sass_backfill"


@pytest.fixture(scope="module")
def api(real_airflow):
    """A REST API v2 client with a JWT from ``POST /auth/token`` (closed before Airflow stops)."""
    with real_airflow.client() as client:
        yield client


@pytest.fixture(scope="module")
def history(real_airflow):
    """~3.5 days of synthetic events in the offline history the Airflow tasks read."""
    from streaming.history import append_history
    from streaming.sources import SyntheticSource, events_frame

    settings = real_airflow.settings
    source = SyntheticSource(n_users=60, n_items=300, n_events=3000, scenarios=settings.scenarios, seed=3,
                             mean_gap_ms=600_000)
    df = events_frame(source.events())
    append_history(settings.streaming.offline_dir, df, name="synthetic-3")
    return df


def test_backfill_dag_through_the_rest_api(real_airflow, api, history):
    from features.store import OnlineWriter, build_store
    from streaming.history import read_history
    from streaming.replay import compare_online, recompute

    settings = real_airflow.settings
    wait_for(lambda: api.get(f"/dags/{DAG_ID}").status_code == 200, 120, interval=1.0)
    assert api.patch(f"/dags/{DAG_ID}", json={"is_paused": False}).status_code == 200

    first_day = datetime.fromtimestamp(int(history["event_time"].min()) / 1000, tz=timezone.utc).date()
    start, end = first_day.isoformat(), (first_day + timedelta(days=1)).isoformat()
    scenarios = settings.scenarios[1:4]

    bad = api.post(f"/dags/{DAG_ID}/dagRuns", json={"logical_date": None,
                                                     "conf": {"start": start, "end": end, "scenarios": ["casino"]}})
    assert bad.status_code == 400 and "casino" in bad.text  # Params validation happens at trigger time

    conf = {"start": start, "end": end, "scenarios": scenarios, "recompute_features": True, "retrain": False}
    r = api.post(f"/dags/{DAG_ID}/dagRuns", json={"logical_date": None, "conf": conf})
    assert r.status_code == 200, r.text
    run_id = r.json()["dag_run_id"]
    state = wait_for(lambda: (s := api.get(f"/dags/{DAG_ID}/dagRuns/{run_id}").json()["state"])
                     in ("success", "failed") and s, 300, interval=1.0)
    tasks = {t["task_id"]: t["state"]
             for t in api.get(f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances").json()["task_instances"]}
    assert state == "success", tasks
    assert tasks["replay_features"] == "success" and tasks["retrain_requested"] == "success"
    assert {s for t, s in tasks.items() if t.startswith("retrain.")} == {"skipped"}  # retrain=false

    replayed = api.get(f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/replay_features/xcomEntries/return_value",
                       params={"deserialize": True}).json()["value"]
    window = read_history(settings.streaming.offline_dir, replayed["start_ms"], replayed["end_ms"], scenarios)
    assert 0 < len(window) < len(history) and replayed["events"] == len(window)
    assert set(window["scenario"]) <= set(scenarios)

    # The online store holds exactly what a batch recomputation of the window gives.
    expected = recompute(window, settings.scenarios)
    check = compare_online(OnlineWriter(build_store(settings)), expected)
    assert check["keys"] > 0 and check["missing"] == 0 and check["mismatched"] == 0, check


def test_airflow_backfill_create_on_the_retrain_dag(real_airflow, api, history):
    from serving.bundle import current_bundle_id
    from training.registry import ModelRegistry

    settings = real_airflow.settings
    wait_for(lambda: api.get("/dags/sass_retrain").status_code == 200, 120, interval=1.0)
    last_day = datetime.fromtimestamp(int(history["event_time"].max()) / 1000, tz=timezone.utc).date()
    day = (last_day + timedelta(days=1)).isoformat()  # its trailing window holds the whole history
    # Backfills run only for an unpaused DAG; unpausing also starts today's scheduled run, whose window
    # (the last 28 days) has no events: it must fail saying so, and leave the bundle alone.
    assert api.patch("/dags/sass_retrain", json={"is_paused": False}).status_code == 200
    real_airflow.airflow("backfill", "create", "--dag-id", "sass_retrain", "--from-date", day, "--to-date", day)
    run_id = f"backfill__{day}T00:00:00+00:00"
    state = wait_for(lambda: (s := api.get(f"/dags/sass_retrain/dagRuns/{run_id}").json().get("state"))
                     in ("success", "failed") and s, 300, interval=1.0)
    tasks = {t["task_id"]: t["state"]
             for t in api.get(f"/dags/sass_retrain/dagRuns/{run_id}/taskInstances").json()["task_instances"]}
    assert state == "success" and set(tasks.values()) == {"success"}, tasks

    published = api.get(f"/dags/sass_retrain/dagRuns/{run_id}/taskInstances/retrain.publish/xcomEntries/return_value",
                        params={"deserialize": True}).json()["value"]
    assert current_bundle_id(settings) == published["bundle_id"]
    promoted = ModelRegistry(settings.training.registry_url.get_secret_value()).promoted()
    assert promoted.bundle_id == published["bundle_id"] and promoted.published
    events = api.get("/assets/events", params={"source_dag_id": "sass_retrain"}).json()["asset_events"]
    assert [e["extra"].get("bundle_id") for e in events] == [published["bundle_id"]]

    def scheduled_run_done():
        runs = api.get("/dags/sass_retrain/dagRuns", params={"run_type": "scheduled"}).json()["dag_runs"]
        return runs if runs and all(r["state"] in ("success", "failed") for r in runs) else None

    scheduled = wait_for(scheduled_run_done, 120, interval=1.0)
    assert [r["state"] for r in scheduled] == ["failed"]
    failed = {t["task_id"]: t["state"] for t in api.get(
        f"/dags/sass_retrain/dagRuns/{scheduled[0]['dag_run_id']}/taskInstances").json()["task_instances"]}
    assert failed["retrain.build_training_set"] == "failed" and failed["retrain.publish"] == "upstream_failed"
    log = api.get(f"/dags/sass_retrain/dagRuns/{scheduled[0]['dag_run_id']}/taskInstances/"
                  "retrain.build_training_set/logs/1", headers={"Accept": "application/json"})
    assert "no events in the offline history" in log.text  # Airflow says why
    assert current_bundle_id(settings) == published["bundle_id"]
