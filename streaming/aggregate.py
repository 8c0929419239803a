"""Per-scenario feature aggregation: events in, feature rows out.  Pure: no I/O, no clocks.

The same code runs in the live consumer (``streaming.consumer``) and in the batch replay over
the offline history (``streaming.replay``); exactness means both produce identical rows.

Windows (sizes and tiles from ``sassflow.contracts.features``; chosen so that features depend only on the *set* of events a key has seen, never on
arrival order — that is what makes replays, rebalances and batch recomputation agree exactly):

* every window ends at T, the newest event time seen for the key (the key's own event clock);
* ``*_1h``  counts events whose UTC minute bucket lies in the 60 minute-buckets ending with T's;
* ``*_24h`` / ``*_7d`` count events whose UTC hour bucket lies in the 24 / 168 hour-buckets
  ending with T's;
* ``ctr_*`` = clicks / impressions over the same window (0.0 when there is no impression);
* ``recent_clicks`` = item ids of the ``SEQ_LEN`` newest clicks, ordered by (event_time, event_id) desc;
* ``trending`` (items) = (clk_1h + 1) / (clk_24h / 24 + 1): last hour's click rate against the
  hourly average of the day, smoothed so that cold items sit at 1.0.

State keeps 60 minute buckets and 168 hour buckets behind T.  T only grows, so a pruned bucket
can never re-enter a window, and an event older than a key's horizon lands in no window.

Lateness rule: an event older than (its partition's newest event time − allowed_lateness) is
*late*.  It is counted (metric ``sassflow_ingest_late_events_total``), written to the history
like any other event, and still applied to every window it falls in — exact, because the state
covers the whole 7-day horizon.  An event older than its key's horizon changes the counters of
no window (it still enters ``recent_clicks``/``last_click_ms`` if it ranks there).

Producer-side duplicates (one event_id at two offsets) are counted twice here; the consumer
guarantees that one *offset* is applied exactly once.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Iterable, NamedTuple

from sassflow.contracts.features import (HOUR_MS, ITEM_SCENARIO_STATS, MINUTE_MS, SEQ_LEN, USER_PROFILE,
                                         USER_SCENARIO_STATS, WINDOW_1H, WINDOW_7D, WINDOW_24H, View)

MINUTES_1H = WINDOW_1H.tiles
HOURS_24H = WINDOW_24H.tiles
HOURS_7D = WINDOW_7D.tiles
RECENT_CLICKS = SEQ_LEN


class Ev(NamedTuple):
    """The fields aggregation needs, as a cheap tuple (the consumer builds it from ``Event``)."""

    event_id: str
    user_id: int
    item_id: int
    scenario: str
    is_click: bool
    event_time: int


def ev_from_fields(d: dict) -> Ev:
    """From ``sassflow.contracts.events.parse_event_fields`` output (what the consumers parse into)."""
    return Ev(d["event_id"], d["user_id"], d["item_id"], d["scenario"], d["event_type"] == "click", d["event_time"])


@dataclass(slots=True)
class KeyState:
    """Bucketed impression/click counts of one (entity, scenario) key."""

    newest_ms: int = 0
    last_click_ms: int | None = None
    minutes: dict = field(default_factory=dict)  # minute index -> [imp, clk]
    hours: dict = field(default_factory=dict)  # hour index -> [imp, clk]
    recent: list = field(default_factory=list)  # [(event_time, event_id, item_id)] newest first

    def add(self, ev: Ev, keep_recent: bool) -> None:
        t = ev.event_time
        if t > self.newest_ms:
            self.newest_ms = t
        slot = 1 if ev.is_click else 0
        m, h = t // MINUTE_MS, t // HOUR_MS
        if m > self.newest_ms // MINUTE_MS - MINUTES_1H:
            b = self.minutes.get(m)
            if b is None:
                b = self.minutes[m] = [0, 0]
            b[slot] += 1
        if h > self.newest_ms // HOUR_MS - HOURS_7D:
            b = self.hours.get(h)
            if b is None:
                b = self.hours[h] = [0, 0]
            b[slot] += 1
        if ev.is_click:
            if self.last_click_ms is None or t > self.last_click_ms:
                self.last_click_ms = t
            if keep_recent:
                _insert_recent(self.recent, (t, ev.event_id, ev.item_id))

    def prune(self) -> None:
        m0, h0 = self.newest_ms // MINUTE_MS - MINUTES_1H, self.newest_ms // HOUR_MS - HOURS_7D
        for k in [k for k in self.minutes if k <= m0]:
            del self.minutes[k]
        for k in [k for k in self.hours if k <= h0]:
            del self.hours[k]

    def counts(self, end_ms: int | None = None) -> tuple[int, int, int, int, int, int]:
        """(imp_1h, imp_24h, imp_7d, clk_1h, clk_24h, clk_7d) for windows ending at end_ms (default T)."""
        end = self.newest_ms if end_ms is None else end_ms
        m0, h24, h7 = end // MINUTE_MS - MINUTES_1H, end // HOUR_MS - HOURS_24H, end // HOUR_MS - HOURS_7D
        i1 = c1 = i24 = c24 = i7 = c7 = 0
        for m, (i, c) in self.minutes.items():
            if m > m0:
                i1 += i
                c1 += c
        for h, (i, c) in self.hours.items():
            if h > h7:
                i7 += i
                c7 += c
                if h > h24:
                    i24 += i
                    c24 += c
        return i1, i24, i7, c1, c24, c7

    def window_row(self) -> dict:
        """The window counters and CTRs every per-scenario view shares (prunes first)."""
        self.prune()
        i1, i24, i7, c1, c24, c7 = self.counts()
        return {"imp_1h": i1, "imp_24h": i24, "imp_7d": i7, "clk_1h": c1, "clk_24h": c24, "clk_7d": c7,
                "ctr_24h": _ctr(c24, i24), "ctr_7d": _ctr(c7, i7)}

    def to_json(self) -> list:
        return [self.newest_ms, self.last_click_ms, [[k, *v] for k, v in self.minutes.items()],
                [[k, *v] for k, v in self.hours.items()], [list(r) for r in self.recent]]

    @classmethod
    def from_json(cls, d: list) -> "KeyState":
        return cls(d[0], d[1], {k: [i, c] for k, i, c in d[2]}, {k: [i, c] for k, i, c in d[3]},
                   [tuple(r) for r in d[4]])


def _insert_recent(recent: list, entry: tuple) -> None:
    if len(recent) >= RECENT_CLICKS and entry[:2] <= recent[-1][:2]:
        return
    i = 0
    while i < len(recent) and recent[i][:2] > entry[:2]:
        i += 1
    recent.insert(i, entry)
    del recent[RECENT_CLICKS:]


def _ctr(clk: int, imp: int) -> float:
    return clk / imp if imp else 0.0


class _ScenarioKeys:
    """The ``KeyState`` of every (entity id, scenario) key, and their incremental snapshot."""

    def __init__(self):
        self.keys: dict[tuple[int, str], KeyState] = {}
        self.snapshot = _Snapshot(self.keys)

    def _apply(self, k: tuple[int, str], ev: Ev, keep_recent: bool) -> bool:
        """Add ev to key k's state; True when k is a new key."""
        st = self.keys.get(k)
        new = st is None
        if new:
            st = self.keys[k] = KeyState()
        st.add(ev, keep_recent)
        self.snapshot.dirty.add(k)
        return new

    def load_json(self, d: dict) -> None:
        """Restore from ``snapshot.text()``."""
        for k, v in d.items():
            e, s = k.split("|", 1)
            self.keys[(int(e), s)] = KeyState.from_json(v)
        self.snapshot.dirty.update(self.keys)


class UserFeatures(_ScenarioKeys):
    """State and rows of the user views: ``user_scenario_stats`` and ``user_profile``."""

    def __init__(self, scenarios: list[str]):
        super().__init__()
        self.scenarios = list(scenarios)
        self.user_scenarios: dict[int, set[str]] = {}

    def add(self, ev: Ev) -> None:
        if self._apply((ev.user_id, ev.scenario), ev, keep_recent=True):
            self.user_scenarios.setdefault(ev.user_id, set()).add(ev.scenario)

    def scenario_row(self, user_id: int, scenario: str) -> tuple[dict, int]:
        st = self.keys[(user_id, scenario)]
        row = st.window_row()
        row["recent_clicks"] = [r[2] for r in st.recent]
        row["last_click_ms"] = st.last_click_ms
        return row, st.newest_ms

    def profile_row(self, user_id: int) -> tuple[dict, int]:
        states = {s: self.keys[(user_id, s)] for s in self.user_scenarios[user_id]}
        end = max(st.newest_ms for st in states.values())
        clicks = {s: 0 for s in self.scenarios}
        total_imp = 0
        merged: list = []
        for s, st in states.items():
            _, _, i7, _, _, c7 = st.counts(end)
            total_imp += i7
            clicks[s] = c7
            merged.extend(st.recent)
        merged.sort(key=lambda r: r[:2], reverse=True)
        total_clk = sum(clicks.values())
        share = [clicks[s] / total_clk if total_clk else 0.0 for s in self.scenarios]
        row = {"total_imp_7d": total_imp, "total_clk_7d": total_clk, "scenario_click_share": share,
               "recent_clicks_all": [r[2] for r in merged[:RECENT_CLICKS]]}
        return row, end

    def rows(self, touched: Iterable[tuple[int, str]]) -> tuple[list, list]:
        """Rows for the touched (user, scenario) keys and their users:
        ([(user_id, scenario, features, ts_ms)], [(user_id, features, ts_ms)])."""
        touched = sorted(set(touched))
        scen = [(u, s, *self.scenario_row(u, s)) for u, s in touched]
        prof = [(u, *self.profile_row(u)) for u in sorted({u for u, _ in touched})]
        return scen, prof

    def load_json(self, d: dict) -> None:
        super().load_json(d)
        for u, s in self.keys:
            self.user_scenarios.setdefault(u, set()).add(s)


class ItemFeatures(_ScenarioKeys):
    """State and rows of ``item_scenario_stats``."""

    def add(self, ev: Ev) -> None:
        self._apply((ev.item_id, ev.scenario), ev, keep_recent=False)

    def row(self, item_id: int, scenario: str) -> tuple[dict, int]:
        st = self.keys[(item_id, scenario)]
        row = st.window_row()
        row["trending"] = (row["clk_1h"] + 1) / (row["clk_24h"] / HOURS_24H + 1)
        return row, st.newest_ms

    def rows(self, touched: Iterable[tuple[int, str]]) -> list:
        return [(i, s, *self.row(i, s)) for i, s in sorted(set(touched))]


class _Snapshot:
    """The state as JSON text, re-encoding only the keys changed since the last snapshot (a
    checkpoint every few seconds must not cost a full re-serialisation of every key)."""

    def __init__(self, keys: dict):
        self.keys = keys
        self.dirty: set = set()
        self.fragments: dict = {}

    def text(self) -> str:
        for k in self.dirty:
            self.fragments[k] = f'"{k[0]}|{k[1]}":' + json.dumps(self.keys[k].to_json(), separators=(",", ":"))
        self.dirty.clear()
        return "{" + ",".join(self.fragments.values()) + "}"


@dataclass
class FeatureRows:
    """Everything the online store holds, keyed for comparison (one row per key)."""

    user_scenario: dict = field(default_factory=dict)  # (user, scenario) -> (features, ts_ms)
    user_profile: dict = field(default_factory=dict)  # user -> (features, ts_ms)
    item_scenario: dict = field(default_factory=dict)  # (item, scenario) -> (features, ts_ms)

    def by_view(self) -> list[tuple[View, dict]]:
        return [(USER_SCENARIO_STATS, self.user_scenario), (USER_PROFILE, self.user_profile),
                (ITEM_SCENARIO_STATS, self.item_scenario)]


def batch_features(events: Iterable[Ev], scenarios: list[str]) -> FeatureRows:
    """The batch driver's whole computation: every event, then one row per key."""
    users, items = UserFeatures(scenarios), ItemFeatures()
    for ev in events:
        users.add(ev)
        items.add(ev)
    scen, prof = users.rows(users.keys)
    out = FeatureRows()
    out.user_scenario = {(u, s): (f, t) for u, s, f, t in scen}
    out.user_profile = {u: (f, t) for u, f, t in prof}
    out.item_scenario = {(i, s): (f, t) for i, s, f, t in items.rows(items.keys)}
    return out
