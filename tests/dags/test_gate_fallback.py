"""While no model has passed the quality gate, ``sass_retrain`` publishes a popularity bundle: the
service answers every request with the popular fallback and says so in /version; the first model
that beats popularity replaces it."""
from __future__ import annotations

from datetime import datetime, timezone

import httpx
import numpy as np

from cli.local.dagrun import dag_test_runs
from tests.dags.conftest import SMALL_TRAINING
from tests.serving.conftest import served_bundle, wait_for


def test_popularity_bundle_until_a_model_beats_popularity(airflow_home, tmp_path, request):
    from cli.local.server import ServerProcess
    from serving.bundle import current_bundle_id
    from streaming.history import append_history
    from streaming.replay import replay_history_to_stores
    from streaming.sources import SyntheticSource, events_frame
    from tests.conftest import make_settings
    from training.registry import ModelRegistry

    settings = make_settings(tmp_path / "state", airflow={"home": airflow_home},
                             training={**SMALL_TRAINING, "finetune_epochs": 10},
                             serving={"watch_interval_s": 0.25})
    ev = events_frame(SyntheticSource(n_users=100, n_items=300, n_events=30000, seed=11).events())
    append_history(settings.streaming.offline_dir,
                   ev.assign(kafka_partition=np.int32(0), kafka_offset=np.arange(len(ev), dtype=np.int64)))
    replay_history_to_stores(settings, None, None)  # the online store the service reads
    day = datetime.fromtimestamp(int(ev["event_time"].max()) / 1000, tz=timezone.utc).date().isoformat()
    window = {"start": day, "end": day}

    # an untrained candidate (no stage-2 epoch) does not beat popularity: nothing is promoted
    (untrained,) = dag_test_runs(settings, "sass_retrain", [
        {"conf": window, "logical_date": f"{day}T05:00:00+00:00", "env": {"SASSFLOW_TRAINING__FINETUNE_EPOCHS": "0"}}])
    gate = untrained["results"]["retrain.quality_gate"]
    assert untrained["tasks"]["retrain.publish"] == "skipped" and not gate["promoted"]
    assert gate["candidate"] < gate["popularity"] and "does not beat popularity" in gate["reason"]
    assert current_bundle_id(settings) == gate["fallback_bundle_id"]
    assert ModelRegistry.from_settings(settings).promoted() is None

    with ServerProcess(settings, log_path=tmp_path / "server.log") as server:
        client = httpx.Client(base_url=server.url, timeout=30)
        request.addfinalizer(client.close)
        server.wait_ready()
        version = client.get("/version").json()
        assert version["kind"] == "popularity" and version["model_version"] == "popularity"
        r = client.get("/recommend", params={"user_id": 3, "scenario": settings.scenarios[1], "k": 5}).json()
        assert r["fallback"] is True and len(r["items"]) == 5

        (trained,) = dag_test_runs(settings, "sass_retrain", [
            {"conf": window, "logical_date": f"{day}T06:00:00+00:00",
             "env": {"SASSFLOW_TRAINING__FINETUNE_EPOCHS": "10"}}])
        gate = trained["results"]["retrain.quality_gate"]
        assert gate["promoted"] and gate["candidate"] > gate["popularity"], gate
        new = trained["results"]["retrain.publish"]["bundle_id"]
        wait_for(lambda: served_bundle(client) == new, 60)
        assert client.get("/version").json()["kind"] == "sass"
