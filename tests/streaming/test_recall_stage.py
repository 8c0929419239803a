"""The recall stage against the real broker (several partitions) and real stores: what the live
stage stores equals the batch structures over the same events, and equals the rebuild from the
offline history, across a crash of the stage; SQLite (embedded default) and Redis (production)."""
from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time

from features.recall_store import SqliteRecallStore, compare_recall, open_recall_store
from sassflow.contracts.recall import read_item_tags, write_item_tags
from streaming.ingest import _stage_main
from streaming.recall_stage import rebuild_recall_structures
from streaming.recall_structures import RecallParams, batch_recall
from streaming.replay import frame_to_evs
from streaming.sources import SyntheticSource, events_frame
from tests.streaming.test_ingest import _join_all, _produce, _tuned


def _spawn(settings, stage, index, until_idle):
    p = mp.get_context("spawn").Process(target=_stage_main, args=(settings, stage, 0, 1, index, None, until_idle))
    p.start()
    return p


def _checkpointed(settings, timeout=90):
    root = settings.streaming.checkpoint_dir
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(p.name == "state.json" and ".recall" in str(p) for p in root.rglob("state.json")):
            return
        time.sleep(0.1)
    raise AssertionError("the recall stage wrote no checkpoint")


def _live_equals_batch_and_rebuild(settings):
    src = SyntheticSource(n_users=120, n_items=150, n_events=4000, seed=21, mean_gap_ms=30_000.0)
    events = list(src.events())
    write_item_tags(settings.recall.catalog_dir, {i: [f"cat{c}"] for i, c in enumerate(src.truth.item_category)})
    _produce(settings, events[:2500])
    recall = _spawn(settings, "recall", 1, until_idle=None)
    try:
        _checkpointed(settings)
        os.kill(recall.pid, signal.SIGKILL)  # a crash between checkpoints: the restart replays the rest
        recall.join(30)
    finally:
        if recall.is_alive():
            recall.kill()
    _produce(settings, events[2500:])
    _join_all([_spawn(settings, "recall", 1, until_idle=4), _spawn(settings, "user", 0, until_idle=4)])

    clicks = [e for e in frame_to_evs(events_frame(events)) if e.is_click]
    expected = batch_recall(clicks, RecallParams.from_settings(settings), read_item_tags(settings.recall.catalog_dir))
    assert {k.split("|")[0] for k in expected} == {"i2i", "tags", "trending"}
    report = compare_recall(open_recall_store(settings), expected)
    assert report["mismatched"] == report["missing"] == report["extra"] == 0, str(report)

    rebuilt = SqliteRecallStore(settings.state_dir / "rebuilt.db")
    summary = rebuild_recall_structures(settings, store=rebuilt)
    assert summary["rows"] == len(expected) and summary["clicks"] == len(clicks)
    assert compare_recall(rebuilt, expected) == {"keys": len(expected), "mismatched": 0, "missing": 0,
                                                 "extra": 0, "examples": []}


def _settings(kafka, **recall):
    s = _tuned(kafka)  # the events topic has settings.kafka.partitions (4) partitions
    assert s.kafka.partitions >= 3
    s.recall.tile_ms = 60_000  # small tiles and horizon: pruning happens within the test's events
    s.recall.horizon_ms = 20 * 60_000
    s.recall.half_life_ms = 10 * 60_000
    for k, v in recall.items():
        setattr(s.recall, k, v)
    return s


def test_live_recall_stage_equals_batch_and_history_rebuild_sqlite(kafka):
    _live_equals_batch_and_rebuild(_settings(kafka))


def test_live_recall_stage_equals_batch_on_redis(kafka, redis_server):
    s = _settings(kafka, store="redis", redis_prefix=f"test:{kafka.kafka.consumer_group}:")
    s.feast.redis_connection_string = type(s.feast.redis_connection_string)(redis_server.connection_string)
    _live_equals_batch_and_rebuild(s)
