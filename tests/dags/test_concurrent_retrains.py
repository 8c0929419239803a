"""Two retrains at the same time, whatever Airflow's concurrency settings: two ``dag.test()`` runs of
``sass_retrain`` in two processes with their own Airflow metadata databases (so no Airflow pool or
max_active_runs can serialise them), sharing one sassflow state (history, registry, bundle folder).

The test holds the registry's promotion lock until both runs have trained and evaluated, so their
gates contend.  With the lock the gates take turns: exactly one candidate is the "first promoted
model", the other is compared with it; one model ends promoted and ``CURRENT`` is its bundle.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path

from cli.local.dagrun import dag_test, ensure_migrated
from tests.conftest import make_settings
from tests.dags.conftest import SMALL_TRAINING
from tests.serving.conftest import wait_for


def test_two_concurrent_retrains_promote_in_one_order_and_leave_one_current(tmp_path, airflow_home):
    from serving.bundle import current_bundle_id
    from streaming.history import append_history
    from streaming.sources import SyntheticSource, events_frame
    from training.registry import ModelRegistry

    settings = make_settings(tmp_path / "state", training=SMALL_TRAINING, airflow={"home": airflow_home})
    other_home = tmp_path / "airflow-b"
    other = settings.model_copy(deep=True, update={"airflow": settings.airflow.model_copy(update={"home": other_home})})
    ensure_migrated(other)
    df = events_frame(SyntheticSource(n_users=120, n_items=300, n_events=6000, scenarios=settings.scenarios,
                                      seed=4, mean_gap_ms=60_000).events())
    append_history(settings.streaming.offline_dir, df, name="synthetic-4")
    registry = ModelRegistry.from_settings(settings)
    runs = Path(settings.state_dir) / "runs" / "sass_retrain"
    results = {}

    def retrain(name, s, hour):
        results[name] = dag_test(s, "sass_retrain", logical_date=f"2024-01-01T{hour}:00:00+00:00",
                                 conf={"start": "2023-11-01", "end": "2023-12-31"})

    with registry.promotion_lock():
        threads = [threading.Thread(target=retrain, args=("a", settings, "06")),
                   threading.Thread(target=retrain, args=("b", other, "07"))]
        for t in threads:
            t.start()
        wait_for(lambda: len(list(runs.glob("*/retrain.evaluate/result.json"))) == 2, 600, interval=1.0)
        time.sleep(3)  # both gates are now waiting for the lock
        held_until = time.time()
    for t in threads:
        t.join(600)

    assert {r["state"] for r in results.values()} == {"success"}, results
    versions = sorted(registry.list(name="sass"), key=lambda v: v.id)
    assert len(versions) == 2 and all(v.created_at.timestamp() >= held_until for v in versions)
    gates = {r["results"]["retrain.quality_gate"]["version"]: r["results"]["retrain.quality_gate"]["reason"]
             for r in results.values()}
    first = [v for v, reason in gates.items() if "first promoted model" in reason]
    assert len(first) == 1, gates  # without the lock both gates see no champion and both say so
    second = next(v for v in gates if v != first[0])
    assert f"champion v{first[0]}" in gates[second]  # the second gate compared with the first one's model
    promoted = [v for v in versions if v.status == "promoted"]
    assert len(promoted) == 1 and promoted[0].published
    assert current_bundle_id(settings) == promoted[0].bundle_id
    publish_states = sorted(r["tasks"]["retrain.publish"] for r in results.values())
    assert publish_states in (["skipped", "success"], ["success", "success"])  # a superseded model never publishes last
