"""The offline history contract: partitioned parquet, idempotent appends, filtered reads."""
from __future__ import annotations

from sassflow.contracts.history import segment_name
from streaming.history import append_history, high_water, read_history
from streaming.sources import SyntheticSource, events_frame


def test_append_is_idempotent_and_partitioned_by_utc_date(tmp_path):
    df = events_frame(SyntheticSource(n_users=20, n_items=30, n_events=600, seed=1, mean_gap_ms=600_000.0).events())
    df["kafka_partition"], df["kafka_offset"] = 0, range(len(df))
    head, tail = df.iloc[:400], df.iloc[400:]
    append_history(tmp_path, head, name=segment_name("t", 0, 0, 399))
    append_history(tmp_path, head, name=segment_name("t", 0, 0, 399))  # a replay: same file, same rows
    append_history(tmp_path, tail, name=segment_name("t", 0, 400, len(df) - 1))
    assert high_water(tmp_path, "t", 0) == len(df) - 1 and high_water(tmp_path, "t", 1) == -1
    dates = sorted(p.name for p in (tmp_path / "events").iterdir())
    assert len(dates) > 1 and all(d.startswith("date=") for d in dates)
    out = read_history(tmp_path)
    assert len(out) == len(df) and out["event_time"].is_monotonic_increasing
    assert list(out.columns) == ["event_id", "user_id", "item_id", "scenario", "event_type", "event_time",
                                 "dwell_ms", "kafka_partition", "kafka_offset"]
    mid = int(df["event_time"].iloc[300])
    part = read_history(tmp_path, start_ms=mid, scenarios=["drama"])
    assert len(part) == ((df["event_time"] >= mid) & (df["scenario"] == "drama")).sum()
