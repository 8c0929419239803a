"""The batch driver: the same pure aggregation (``streaming.aggregate``) over the offline history.

Used by the backfill DAG (``replay_history_to_stores``) and by tests/benchmarks as the batch
recomputation the live consumer must match exactly.

A backfill of a window never moves the online store backwards.  The online store holds each key's
*present* row (the stream's state after every event it has seen), so a backfill recomputes, for
every key the window's events touch, its present row from the full history of its entities (every
scenario: a user's profile spans all of them; every event before the window: windows and click
sequences are exact) and writes it only where the store does not already hold a newer row (the
stream may be ahead of the history between two checkpoints).  A scenario filter limits which keys
are touched, never what a touched key is computed from.
"""
from __future__ import annotations

import pandas as pd

from sassflow.contracts.features import SCENARIO, VIEWS, VIEWS_BY_NAME
from streaming.aggregate import Ev, FeatureRows, batch_features

READ_CHUNK = 2000  # keys per online-store read


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
    """Backfill the online store for the window [start_ms, end_ms) of ``scenarios`` (default all):
    every key the window's events touch gets its present row, recomputed from the whole history of
    its entities with the stream's code, unless the store already holds a newer row."""
    from features.store import OnlineWriter, apply_definitions
    from streaming.history import read_history

    history = read_history(settings.streaming.offline_dir)  # up to now: a key's present state needs it all
    window = history[in_window(history, start_ms, end_ms, scenarios)]
    touched = touched_keys(window)
    needed = history[events_of_entities(history, window)]
    rows = present_rows(needed, touched, settings.scenarios)
    written = write_newer_rows(OnlineWriter(apply_definitions(settings)), rows)
    return {"events": len(window), "history_events": len(history), "recomputed_from_events": len(needed),
            "views": written, "start_ms": start_ms, "end_ms": end_ms, "scenarios": scenarios}


def in_window(history: pd.DataFrame, start_ms: int | None, end_ms: int | None, scenarios=None) -> pd.Series:
    """Which events lie in [start_ms, end_ms) (None: unbounded) and in ``scenarios`` (None: all)."""
    mask = pd.Series(True, index=history.index)
    if start_ms is not None:
        mask &= history["event_time"] >= start_ms
    if end_ms is not None:
        mask &= history["event_time"] < end_ms
    if scenarios:
        mask &= history["scenario"].isin(list(scenarios))
    return mask


def touched_keys(window: pd.DataFrame) -> dict[str, set[tuple]]:
    """Per online view, the row keys (tuples in join-key order) that the window's events touch."""
    return {view.name: set(zip(*(window[k].tolist() for k in view.join_keys))) for view in VIEWS}


def events_of_entities(history: pd.DataFrame, window: pd.DataFrame) -> pd.Series:
    """Every event, of any scenario and any time, of an entity (user, item) that has an event in
    ``window``: what the present rows of the touched keys are computed from."""
    columns = sorted({k for view in VIEWS for k in view.join_keys} - {SCENARIO[0]})
    mask = pd.Series(False, index=history.index)
    for col in columns:
        mask |= history[col].isin(window[col].unique())
    return mask


def present_rows(events: pd.DataFrame, touched: dict[str, set[tuple]], scenarios: list[str]) -> list[tuple[str, list]]:
    """The rows of the touched keys, per view, recomputed with the stream's code from ``events``
    (which must hold every event of the touched keys' entities); rows of other keys are dropped,
    since ``events`` holds only part of their history."""
    out = []
    for view_name, data in view_rows(recompute(events, scenarios)):
        keys, join_keys = touched.get(view_name, set()), VIEWS_BY_NAME[view_name].join_keys
        out.append((view_name, [r for r in data if tuple(r[0][k] for k in join_keys) in keys]))
    return out


def write_newer_rows(writer, rows: list[tuple[str, list]]) -> dict:
    """Write each row unless the store holds a newer one for its key (event time of the row vs the
    stored row's; equal times are written: a late event changes values without moving the time).
    Returns, per view, how many rows were written and how many were kept because the store was newer."""
    counts = {}
    for view_name, data in rows:
        written = kept = 0
        for k in range(0, len(data), READ_CHUNK):
            chunk = data[k:k + READ_CHUNK]
            stored = writer.read(view_name, [entity for entity, _, _ in chunk])
            fresh = [row for row, (stored_ts, _) in zip(chunk, stored) if stored_ts is None or row[2] >= stored_ts]
            writer.write(view_name, fresh)
            written, kept = written + len(fresh), kept + len(chunk) - len(fresh)
        counts[view_name] = {"touched": len(data), "written": written, "kept_newer": kept}
    return counts


def compare_online(writer, expected: FeatureRows, max_examples: int = 3, in_flight_ok: bool = False) -> dict:
    """Read every expected key back from the online store; count keys whose row differs.

    Values are compared after the store's own round trip of the expected row (float32), so the
    comparison is exact; event timestamps at whole seconds (the SQLite store keeps seconds).  Returns
    {"keys": n, "mismatched": m, "missing": k, "in_flight": f, "examples": [...]} (up to
    ``max_examples`` differing or missing keys with both rows).  ``in_flight_ok``: a stored row newer
    than the expected one (events the live stream applied that the history does not hold yet) is
    counted as in flight, not as a mismatch."""
    import numpy as np

    out = {"keys": 0, "mismatched": 0, "missing": 0, "in_flight": 0, "examples": []}
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
                if not same and in_flight_ok and got_ts is not None and got_ts // 1000 > ts // 1000:
                    out["in_flight"] += 1
                    continue
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
