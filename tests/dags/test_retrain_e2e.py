"""End to end with ``dag.test()``: synthetic events → real Kafka → the ingest consumers (history +
Feast online store) → ``sass_retrain`` (snapshot, pre-train, fine-tune, evaluate, gate, register,
bundle, publish) → the running HTTP service swaps to the new bundle.  Then a rejected candidate
leaves the served bundle unchanged, and re-running a logical date redoes nothing."""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import httpx

from cli.local.dagrun import dag_test_runs
from tests.dags.conftest import SMALL_TRAINING
from tests.serving.conftest import served_bundle, wait_for

CHAIN = ["training_window", "retrain.check_features", "retrain.build_training_set", "retrain.pretrain",
         "retrain.finetune", "retrain.content_tower", "retrain.evaluate", "retrain.ranking.train_rankers",
         "retrain.ranking.register_rankers", "retrain.quality_gate", "retrain.build_bundle", "retrain.publish"]


def test_kafka_to_retrain_to_a_hot_swapped_service(kafka, airflow_home, tmp_path, request):
    from serving.bundle import build_synthetic_bundle, current_bundle_id, list_bundles, publish_bundle
    from cli.local.server import ServerProcess
    from streaming.topics import ensure_topics
    from streaming.history import read_history
    from streaming.ingest import run_ingest
    from streaming.produce import produce_events
    from streaming.sources import SyntheticSource
    from training.registry import ModelRegistry

    settings = kafka.model_copy(deep=True, update={
        # stage 2 needs a few epochs to beat popularity (the gate's floor); early stopping picks them
        "training": kafka.training.model_copy(update={**SMALL_TRAINING, "finetune_epochs": 10}),
        "airflow": kafka.airflow.model_copy(update={"home": airflow_home}),
        "serving": kafka.serving.model_copy(update={"watch_interval_s": 0.25}),
    })

    # Kafka → ingest: the history and the online store the DAG and the service read.
    # ~300 events per user and ~100 per item: enough to learn the planted structure and beat popularity
    source = SyntheticSource(n_users=100, n_items=300, n_events=30000, scenarios=settings.scenarios, seed=11)
    ensure_topics(settings)
    produce_events(settings, source.events(), show_progress=False)
    assert run_ingest(settings, processes=1, item_shards=1, until_idle=5.0) == 0
    history = read_history(settings.streaming.offline_dir)
    assert len(history) == 30000
    day = datetime.fromtimestamp(int(history["event_time"].max()) / 1000, tz=timezone.utc).date().isoformat()

    # The service runs on an older bundle.
    publish_bundle(settings, build_synthetic_bundle(settings, 300, 16, seed=1).name)
    old = current_bundle_id(settings)
    with ServerProcess(settings, log_path=tmp_path / "server.log") as server:
        assert server.wait_ready()["bundle_id"] == old

        window = {"start": day, "end": day}
        first, rejected, again = dag_test_runs(settings, "sass_retrain", [
            {"conf": window, "logical_date": f"{day}T06:00:00+00:00"},
            # A candidate that cannot pass the gate: it must beat the promoted model's recall by 1.0.
            {"conf": window, "logical_date": f"{day}T07:00:00+00:00",
             "env": {"SASSFLOW_TRAINING__QUALITY_TOLERANCE": "-1.0"}},
            # Re-running the first logical date redoes nothing.
            {"conf": window, "logical_date": f"{day}T06:00:00+00:00",
             "env": {"SASSFLOW_TRAINING__QUALITY_TOLERANCE": str(settings.training.quality_tolerance)}},
        ])
        assert first["state"] == "success" and all(first["tasks"].get(t) == "success" for t in CHAIN), first
        new = current_bundle_id(settings)
        assert new != old
        client = httpx.Client(base_url=server.url, timeout=30)
        request.addfinalizer(client.close)
        wait_for(lambda: served_bundle(client) == new, 60)  # the running service swapped to the published bundle
        version = client.get("/version").json()
        assert version["kind"] == "sass"
        r = client.get("/recommend", params={"user_id": 3, "scenario": settings.scenarios[1], "k": 10})
        assert r.status_code == 200 and r.json()["bundle_id"] == new and len(r.json()["items"]) == 10

        registry = ModelRegistry(settings.training.registry_url.get_secret_value())
        versions = registry.list(name="sass")
        assert [v.status for v in sorted(versions, key=lambda v: v.id)] == ["promoted", "rejected"]
        promoted, loser = sorted(versions, key=lambda v: v.id)
        assert str(promoted.id) == str(version["model_version"]) and promoted.bundle_id == new
        assert "tolerance" in (loser.status_reason or "")

        # The rejection is a decision, not a failure: the run succeeds, the bundle tasks are skipped
        # and the service keeps serving the promoted model's bundle.
        assert rejected["state"] == "success", rejected
        assert {rejected["tasks"][t] for t in ("retrain.quality_gate", "retrain.build_bundle",
                                                "retrain.publish")} == {"skipped"}, rejected
        assert again["state"] == "success" and all(again["tasks"].get(t) == "success" for t in CHAIN), again
        assert len(list_bundles(settings)) == 2  # the synthetic one and the first run's, no more
        assert current_bundle_id(settings) == new
        assert served_bundle(client) == new
    runs = Path(settings.state_dir) / "runs" / "sass_retrain"
    assert (runs / f"{day}T060000" / "retrain.publish" / "result.json").exists()
