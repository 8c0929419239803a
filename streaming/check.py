"""Consistency measured, not assumed: sampled keys of the online store against a recomputation of
their rows from the offline history with the same code (``streaming.replay.recompute``).

Rows are compared as stored (tiles, click sequences, the row's event time): equal tiles give equal
windowed features as of any read time, since both sides read them through ``features.windows``.
While events flow, the online rows run ahead of the history by up to one checkpoint interval: a
stored row newer than the recomputed one is counted as ``in_flight_keys``, not as a mismatch (once
the consumers have drained, as after the demo's ingest, there are none).
"""
from __future__ import annotations

import random

import pandas as pd

from sassflow.contracts.features import ITEM_SCENARIO_STATS, USER_PROFILE, USER_SCENARIO_STATS
from streaming.aggregate import FeatureRows
from streaming.replay import compare_online, recompute


def sample_ids(ids, n: int, seed: int) -> list[int]:
    ids = sorted(set(int(x) for x in ids))
    return ids if len(ids) <= n else sorted(random.Random(seed).sample(ids, n))


def _keys_of(rows: FeatureRows, users: set[int], items: set[int]) -> FeatureRows:
    """The rows of the sampled users (every scenario + profile) and items (every scenario)."""
    return FeatureRows({k: v for k, v in rows.user_scenario.items() if k[0] in users},
                       {k: v for k, v in rows.user_profile.items() if k in users},
                       {k: v for k, v in rows.item_scenario.items() if k[0] in items})


def expected_rows(history: pd.DataFrame, scenarios: list[str], users: set[int], items: set[int]) -> FeatureRows:
    """The sampled keys' rows recomputed from their events only (a key's row depends on nothing else)."""
    mine = history[history["user_id"].isin(users) | history["item_id"].isin(items)]
    return _keys_of(recompute(mine, scenarios), users, items)


def check_features(settings, sample: int = 1000, seed: int = 0, writer=None) -> dict:
    """Sample up to ``sample`` users and ``sample`` items of the offline history, recompute their online
    rows from the history and read them back from the online store.  Returns the BENCHMARKS.md keys
    ``sampled_keys``, ``mismatched_keys`` (missing rows count as mismatched) and ``examples`` (up to
    10 mismatching keys with both values), plus ``missing_keys`` and ``events``."""
    from features.store import OnlineWriter, open_store
    from streaming.history import read_history

    history = read_history(settings.streaming.offline_dir)
    users = set(sample_ids(history["user_id"], sample, seed))
    items = set(sample_ids(history["item_id"], sample, seed + 1))
    expected = expected_rows(history, settings.scenarios, users, items)
    report = compare_online(writer or OnlineWriter(open_store(settings)), expected, max_examples=10, in_flight_ok=True)
    return {"sampled_keys": report["keys"], "mismatched_keys": report["mismatched"] + report["missing"],
            "in_flight_keys": report["in_flight"],
            "missing_keys": report["missing"], "examples": report["examples"], "events": len(history),
            "sampled_users": len(users), "sampled_items": len(items),
            "views": [USER_SCENARIO_STATS.name, USER_PROFILE.name, ITEM_SCENARIO_STATS.name]}
