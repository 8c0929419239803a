"""Where the service gets a user's online features from.

``FeatureReader.read(pairs)`` takes ``(user_id, scenario)`` pairs and returns
one flat row per pair, ``{"user_id": u, <feature name>: value, ...}`` — the
row format the user towers encode.  A user the store has never seen comes back
with every feature ``None`` (that is what Feast returns), which the service
treats as cold start.

``FeastFeatureReader`` is the product path.  ``StaticFeatureReader`` serves a
fixed table and exists for the synthetic benchmarks, whose simulated users have
no rows in any Feast store.
"""
from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from sassflow.contracts.features import USER_FEATURE_NAMES, USER_VIEWS
from sassflow.settings import Settings

FEATURE_NAMES = USER_FEATURE_NAMES


class FeatureReader(Protocol):
    def read(self, pairs: list[tuple[int, str]]) -> list[dict]: ...


def empty_row(user_id: int) -> dict:
    return {"user_id": user_id, **{name: None for name in FEATURE_NAMES}}


class FeastFeatureReader:
    """Online features from the Feast store that the streaming job writes."""

    blocking = True  # network/disk I/O: the app calls it from the thread pool

    def __init__(self, settings: Settings, store=None):
        if store is None:
            from features.store import build_store  # heavy (feast): only on the product path

            store = build_store(settings)
        self.store = store
        self.refs = [f"{view.name}:{f}" for view in USER_VIEWS for f in view.feature_names]

    def read(self, pairs: list[tuple[int, str]]) -> list[dict]:
        entity_rows = [{"user_id": int(u), "scenario": s} for u, s in pairs]
        columns = self.store.get_online_features(features=self.refs, entity_rows=entity_rows).to_dict()
        rows = []
        for i, (u, _) in enumerate(pairs):
            row = empty_row(int(u))
            for name in FEATURE_NAMES:
                if name in columns:
                    row[name] = columns[name][i]
            rows.append(row)
        return rows


class StaticFeatureReader:
    """A fixed in-memory table ``{(user_id, scenario): {feature: value}}`` (synthetic benchmarks)."""

    blocking = False

    def __init__(self, table: dict[tuple[int, str], dict]):
        self.table = table

    def read(self, pairs: list[tuple[int, str]]) -> list[dict]:
        rows = []
        for u, s in pairs:
            row = empty_row(int(u))
            row.update(self.table.get((int(u), s), {}))
            rows.append(row)
        return rows

    @classmethod
    def from_file(cls, path: Path) -> "StaticFeatureReader":
        """Load the ``recent_clicks`` table written by ``save_recent_clicks`` (npz, no pickle)."""
        with np.load(path, allow_pickle=False) as z:
            users, scenario_idx, clicks, names = z["user_ids"], z["scenario_idx"], z["clicks"], z["scenarios"]
        table = {}
        for u, s, c in zip(users.tolist(), scenario_idx.tolist(), clicks):
            table[(u, str(names[s]))] = {"recent_clicks": c[c >= 0].tolist()}
        return cls(table)


def save_recent_clicks(path: Path, scenarios: list[str], table: dict[tuple[int, str], list[int]], width: int = 20) -> None:
    """Write ``{(user_id, scenario): recent click ids}`` for ``StaticFeatureReader.from_file``."""
    keys = list(table)
    clicks = np.full((len(keys), width), -1, dtype=np.int64)
    for i, key in enumerate(keys):
        c = table[key][:width]
        clicks[i, : len(c)] = c
    np.savez(
        path,
        user_ids=np.array([k[0] for k in keys], dtype=np.int64),
        scenario_idx=np.array([scenarios.index(k[1]) for k in keys], dtype=np.int64),
        clicks=clicks,
        scenarios=np.array(scenarios),
    )
