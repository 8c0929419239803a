"""Where the service gets a user's online features from.

``FeatureReader.read(pairs)`` takes ``(user_id, scenario)`` pairs and returns
one flat row per pair, ``{"user_id": u, <feature name>: value, ...}`` — the
row format the user towers encode.  A user the store has never seen comes back
with every feature ``None`` (that is what Feast returns), which the service
treats as cold start.

Window features are evaluated when read, as of the reader's clock
(``features.windows``): the wall clock by default, so a user idle for two hours
reads ``clk_1h = 0`` and an item whose clicks stopped sees its ``trending``
decay.  A replay of old data (MovieLens is from 2000) therefore reads empty
windows at wall-clock time: the SASS user tower then gets a zero
``scenario_click_share`` and still its (unwindowed) click sequences.  Pass
``clock`` (epoch ms) to read as of another time (tests, a replay's data clock).

``FeastFeatureReader`` is the product path.  ``StaticFeatureReader`` serves a
fixed table and exists for the synthetic benchmarks, whose simulated users have
no rows in any Feast store.

Outage policy: a read that fails or takes longer than ``serving.feature_timeout_s`` (a store that
is down, hung, or was never set up with ``sassflow features apply``) raises
``FeaturesUnavailable``; the service answers 503 with the reason, and ``health()`` (what
``/readyz`` reports) says the same until a read succeeds again.  Serving popular items instead would
hide the outage from clients and from every quality figure.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Callable, Protocol

import numpy as np

from features.windows import evaluate
from sassflow.contracts.features import ITEM_SCENARIO_STATS, USER_FEATURE_NAMES, USER_VIEWS
from sassflow.settings import Settings

FEATURE_NAMES = USER_FEATURE_NAMES


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


class FeatureReader(Protocol):
    def read(self, pairs: list[tuple[int, str]]) -> list[dict]: ...

    def health(self) -> str | None:
        """None when reads work, else why not."""


class FeaturesUnavailable(Exception):
    """The online store cannot be read (down, hung, not set up); the message says why."""


def empty_row(user_id: int) -> dict:
    return {"user_id": user_id, **{name: None for name in FEATURE_NAMES}}


class FeastFeatureReader:
    """Online features from the Feast store that the streaming job writes."""

    blocking = True  # network/disk I/O: the app calls it from the thread pool

    def __init__(self, settings: Settings, store=None, clock: Callable[[], int] = wall_clock_ms):
        if store is None:
            from features.store import build_store  # heavy (feast): only on the product path

            store = build_store(settings)
        self.store = store
        self.clock = clock
        self.n_scenarios = len(settings.scenarios)
        sv = settings.serving
        self.timeout_s, self.probe_interval_s = sv.feature_timeout_s, sv.feature_probe_interval_s
        self.probe_rows = [{"user_id": 0, "scenario": settings.scenarios[0]}]
        # Feast's reads have no deadline of their own (SQLite waits on locks, a Redis socket on a
        # hung server): each runs on a daemon thread that is waited for at most timeout_s, and at
        # most feature_read_threads of them may be pending at once.
        self._slots = threading.BoundedSemaphore(sv.feature_read_threads)
        self._lock = threading.Lock()
        self._problem: str | None = None
        self._checked_at = float("-inf")

    def _online_columns(self, refs: list[str], entity_rows: list[dict]) -> dict:
        """Feast's online columns (full feature names), within the timeout, or FeaturesUnavailable."""
        deadline = time.monotonic() + self.timeout_s
        if not self._slots.acquire(timeout=self.timeout_s):
            self._note(f"feature store: every read slot is taken by a read pending for over {self.timeout_s:g}s")
            raise FeaturesUnavailable(self._problem)
        outcome: dict = {}

        def run() -> None:
            try:
                outcome["columns"] = self.store.get_online_features(
                    features=refs, entity_rows=entity_rows, full_feature_names=True).to_dict()
            except Exception as exc:  # whatever the store raised (not found, connection, lock, ...)
                outcome["error"] = exc
            finally:
                self._slots.release()

        reader = threading.Thread(target=run, name="feast-read", daemon=True)
        reader.start()
        reader.join(max(0.0, deadline - time.monotonic()))
        if "columns" in outcome:
            self._note(None)
            return outcome["columns"]
        exc = outcome.get("error")
        self._note(f"feature store read timed out after {self.timeout_s:g}s" if exc is None else
                   f"feature store read failed: {type(exc).__name__}: {str(exc)[:200]}")
        raise FeaturesUnavailable(self._problem)

    def _note(self, problem: str | None) -> None:
        with self._lock:
            self._problem, self._checked_at = problem, time.monotonic()

    def health(self) -> str | None:
        """None when the store answers; probes it (one entity) at most every probe_interval_s."""
        if time.monotonic() - self._checked_at >= self.probe_interval_s:
            try:
                self._stored(USER_VIEWS, self.probe_rows)
            except FeaturesUnavailable:
                pass
        return self._problem

    def _stored(self, views, entity_rows: list[dict]) -> list[dict[str, dict | None]]:
        """Per entity row: {view name: its stored columns, or None without a row}."""
        refs = [f"{view.name}:{f}" for view in views for f in view.feature_names]
        columns = self._online_columns(refs, entity_rows)
        out = []
        for i in range(len(entity_rows)):
            per_view = {}
            for view in views:
                row = {f: columns[f"{view.name}__{f}"][i] for f in view.feature_names}
                per_view[view.name] = row if any(v is not None for v in row.values()) else None
            out.append(per_view)
        return out

    def read(self, pairs: list[tuple[int, str]]) -> list[dict]:
        """Rows of (user, scenario) pairs, windows as of the clock's now."""
        as_of = self.clock()
        stored = self._stored(USER_VIEWS, [{"user_id": int(u), "scenario": s} for u, s in pairs])
        rows = []
        for (u, _), per_view in zip(pairs, stored):
            row = {"user_id": int(u)}
            for view in USER_VIEWS:
                row.update(evaluate(view, per_view[view.name], as_of, self.n_scenarios))
            rows.append(row)
        return rows

    def read_items(self, pairs: list[tuple[int, str]]) -> list[dict]:
        """Rows of (item, scenario) pairs -- ``{"item_id", "scenario", <ITEM_FEATURE_NAMES>}``, windows
        (counts, CTRs, ``trending``) as of the clock's now; every feature None for an item without
        events in that scenario.  For recall branches and ranking."""
        as_of = self.clock()
        stored = self._stored((ITEM_SCENARIO_STATS,), [{"item_id": int(i), "scenario": s} for i, s in pairs])
        return [{"item_id": int(i), "scenario": s,
                 **evaluate(ITEM_SCENARIO_STATS, per_view[ITEM_SCENARIO_STATS.name], as_of, self.n_scenarios)}
                for (i, s), per_view in zip(pairs, stored)]


class StaticFeatureReader:
    """A fixed in-memory table ``{(user_id, scenario): {feature: value}}`` (synthetic benchmarks)."""

    blocking = False

    def __init__(self, table: dict[tuple[int, str], dict]):
        self.table = table

    def health(self) -> str | None:
        return None  # in memory: always readable

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
