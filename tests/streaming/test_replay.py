"""The batch driver (backfill DAG entry point) over the offline history into a real Feast store."""
from __future__ import annotations

from features.store import OnlineWriter, apply_definitions
from sassflow.settings import Settings
from streaming.history import append_history, read_history
from streaming.replay import compare_online, recompute, replay_history_to_stores
from streaming.sources import SyntheticSource, events_frame


def test_replay_history_to_stores_writes_the_present_rows_of_the_keys_the_window_touches(tmp_path):
    s = Settings(state_dir=tmp_path, streaming={"metrics_port": 0})
    df = events_frame(SyntheticSource(n_users=40, n_items=60, n_events=1200, seed=5, mean_gap_ms=60_000.0).events())
    append_history(s.streaming.offline_dir, df)
    start = int(df["event_time"].iloc[400])
    out = replay_history_to_stores(s, start, None)
    part = read_history(s.streaming.offline_dir, start_ms=start)
    assert out["events"] == len(part) == int((df["event_time"] >= start).sum()) >= len(df) - 400  # ties at start
    # Touched keys hold the rows of the whole history (events before the window included).
    report = compare_online(OnlineWriter(apply_definitions(s)), recompute(read_history(s.streaming.offline_dir), s.scenarios))
    written = sum(v["written"] for v in out["views"].values())
    assert report["keys"] > written > 0 and report["mismatched"] == 0, report
    assert report["missing"] == report["keys"] - written  # keys without an event since start: untouched
