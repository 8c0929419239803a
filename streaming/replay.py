"""The batch driver: the same pure aggregation (``streaming.aggregate``) over the offline history.

Used by the backfill DAG (``replay_history_to_stores``) and by tests/benchmarks as the batch
recomputation the live consumer must match exactly.
"""
from __future__ import annotations

import pandas as pd

from streaming.aggregate import Ev, FeatureRows, batch_features


def frame_to_evs(df: pd.DataFrame) -> list[Ev]:
    return [Ev(e, int(u), int(i), s, t == "click", int(ts)) for e, u, i, s, t, ts in zip(
        df["event_id"], df["user_id"], df["item_id"], df["scenario"], df["event_type"], df["event_time"])]


def recompute(df: pd.DataFrame, scenarios: list[str]) -> FeatureRows:
    return batch_features(frame_to_evs(df), scenarios)


def view_rows(rows: FeatureRows) -> list[tuple[str, list]]:
    """Every row, per online view, as ``OnlineWriter.write`` takes them: [(entity, features, ts_ms)]."""
    return [(view.name, [(view.entity(key), f, t) for key, (f, t) in keyed.items()])
            for view, keyed in rows.by_view()]


def write_rows(writer, rows: FeatureRows, batch: int = 5000) -> None:
    """Write every row of a batch recomputation to the online store (absolute values)."""
    for view, data in view_rows(rows):
        for k in range(0, len(data), batch):
            writer.write(view, data[k:k + batch])


def replay_history_to_stores(settings, start_ms: int | None, end_ms: int | None, scenarios=None) -> dict:
    """Recompute features from the history in [start_ms, end_ms) and write them to the online
    store.  Windows end at each key's newest event in the range, as in the live consumer."""
    from features.store import OnlineWriter, apply_definitions
    from streaming.history import read_history

    df = read_history(settings.streaming.offline_dir, start_ms, end_ms, scenarios)
    rows = recompute(df, settings.scenarios)
    writer = OnlineWriter(apply_definitions(settings))
    write_rows(writer, rows)
    return {"events": len(df), "user_scenario_rows": len(rows.user_scenario),
            "user_profile_rows": len(rows.user_profile), "item_scenario_rows": len(rows.item_scenario),
            "start_ms": start_ms, "end_ms": end_ms}


def compare_online(writer, expected: FeatureRows, max_examples: int = 3) -> dict:
    """Read every expected key back from the online store; count keys whose row differs.

    Values are compared after the store's own round trip of the expected row (float32), so the
    comparison is exact; event timestamps at whole seconds (the SQLite store keeps seconds).  Returns
    {"keys": n, "mismatched": m, "missing": k, "examples": [...]} (up to ``max_examples`` differing or
    missing keys with both rows)."""
    import numpy as np

    out = {"keys": 0, "mismatched": 0, "missing": 0, "examples": []}
    for view, items in view_rows(expected):
        for k in range(0, len(items), 2000):
            chunk = items[k:k + 2000]
            got = writer.read(view, [e for e, _, _ in chunk])
            for (entity, feats, ts), (got_ts, got_feats) in zip(chunk, got):
                out["keys"] += 1
                if got_feats is None:
                    out["missing"] += 1
                same = got_feats is not None and got_ts // 1000 == ts // 1000 and \
                    all(_same(feats[n], got_feats.get(n), np) for n in feats)
                if not same:
                    if got_feats is not None:
                        out["mismatched"] += 1
                    if len(out["examples"]) < max_examples:
                        out["examples"].append({"view": view, "entity": entity, "expected": [feats, ts],
                                                "got": [got_feats, got_ts]})
    return out


def _same(a, b, np) -> bool:
    if isinstance(a, float):
        return b is not None and np.float32(a) == np.float32(b)
    if isinstance(a, list) and a and isinstance(a[0], float):
        return b is not None and list(np.float32(a)) == list(np.float32(b))
    return a == b
