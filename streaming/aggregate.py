"""Per-scenario feature aggregation: events in, feature rows out.  Pure: no I/O, no clocks.

The same code runs in the live consumer (``streaming.consumer``) and in the batch replay over
the offline history (``streaming.replay``); exactness means both produce identical rows.

Rows hold tiles, not window totals: the per-key impression/click counts per UTC minute (the last
hour) and per UTC hour (the last 7 days) behind the key's newest event T (sizes from
``sassflow.contracts.features``), plus the click sequences.  Every windowed feature (``*_1h``,
``*_24h``, ``*_7d``, CTRs, ``trending``, the profile's 7d totals and click share) is evaluated from
those tiles when it is read, as of the read time (``features.windows``), so an idle key's windows
empty out instead of freezing at its last event.  Rows depend only on the *set* of events a key has
seen, never on arrival order -- that is what makes replays, rebalances and batch recomputation agree
exactly:

* minute tiles are kept for the 60 minutes ending with T's minute, hour tiles for the 168 hours
  ending with T's hour; T only grows, so a pruned tile can never re-enter a window as of any time
  at or after T;
* ``recent_clicks`` = item ids of the ``SEQ_LEN`` newest clicks, ordered by (event_time, event_id) desc;
* the profile row holds the user's hour tiles of every scenario (scenario index in settings order)
  within the 168 hours ending with the hour of the user's newest event, and ``recent_clicks_all``.

Lateness rule: an event older than (its partition's newest event time - allowed_lateness) is
*late*.  It is counted (metric ``sassflow_ingest_late_events_total``), written to the history
like any other event, and still applied to every tile it falls in -- exact, because the state
covers the whole 7-day horizon.  An event older than its key's horizon lands in no tile (it still
enters ``recent_clicks`` if it ranks there).

Producer-side duplicates (one event_id at two offsets) never reach this module: the stages drop
them first (``streaming.dedup``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Iterable, NamedTuple

from features.windows import encode_tiles
from sassflow.contracts.features import (HOUR_MS, ITEM_SCENARIO_STATS, MINUTE_MS, SEQ_LEN, USER_PROFILE,
                                         USER_SCENARIO_STATS, WINDOW_1H, WINDOW_7D, View)

MINUTES_1H = WINDOW_1H.tiles
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
        if ev.is_click and keep_recent:
            _insert_recent(self.recent, (t, ev.event_id, ev.item_id))

    def prune(self) -> None:
        m0, h0 = self.newest_ms // MINUTE_MS - MINUTES_1H, self.newest_ms // HOUR_MS - HOURS_7D
        for k in [k for k in self.minutes if k <= m0]:
            del self.minutes[k]
        for k in [k for k in self.hours if k <= h0]:
            del self.hours[k]

    def tile_row(self) -> dict:
        """The tile columns every per-scenario view stores (prunes first)."""
        self.prune()
        return {"minute_tiles": encode_tiles(self.minutes), "hour_tiles": encode_tiles(self.hours)}

    def to_json(self) -> list:
        return [self.newest_ms, [[k, *v] for k, v in self.minutes.items()],
                [[k, *v] for k, v in self.hours.items()], [list(r) for r in self.recent]]

    @classmethod
    def from_json(cls, d: list) -> "KeyState":
        return cls(d[0], {k: [i, c] for k, i, c in d[1]}, {k: [i, c] for k, i, c in d[2]},
                   [tuple(r) for r in d[3]])


def _insert_recent(recent: list, entry: tuple) -> None:
    if len(recent) >= RECENT_CLICKS and entry[:2] <= recent[-1][:2]:
        return
    i = 0
    while i < len(recent) and recent[i][:2] > entry[:2]:
        i += 1
    recent.insert(i, entry)
    del recent[RECENT_CLICKS:]


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
        self.scenario_index = {s: k for k, s in enumerate(self.scenarios)}
        self.user_scenarios: dict[int, set[str]] = {}

    def add(self, ev: Ev) -> None:
        if self._apply((ev.user_id, ev.scenario), ev, keep_recent=True):
            self.user_scenarios.setdefault(ev.user_id, set()).add(ev.scenario)

    def scenario_row(self, user_id: int, scenario: str) -> tuple[dict, int]:
        st = self.keys[(user_id, scenario)]
        row = st.tile_row()
        row["recent_clicks"] = [r[2] for r in st.recent]
        return row, st.newest_ms

    def profile_row(self, user_id: int) -> tuple[dict, int]:
        states = {s: self.keys[(user_id, s)] for s in self.user_scenarios[user_id]}
        end = max(st.newest_ms for st in states.values())
        first_hour = end // HOUR_MS - HOURS_7D  # tiles at or before it are in no window as of >= end
        tiles: list = []
        merged: list = []
        for s, st in states.items():
            index = self.scenario_index[s]
            tiles.extend((h, index, i, c) for h, (i, c) in st.hours.items() if h > first_hour)
            merged.extend(st.recent)
        merged.sort(key=lambda r: r[:2], reverse=True)
        tiles.sort()
        row = {"scenario_hour_tiles": [x for tile in tiles for x in tile],
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
        return st.tile_row(), st.newest_ms

    def rows(self, touched: Iterable[tuple[int, str]]) -> list:
        return [(i, s, *self.row(i, s)) for i, s in sorted(set(touched))]


class _Snapshot:
    """The state as JSON text, re-encoding only the keys changed since the last snapshot (a
    checkpoint every few seconds must not cost a full re-serialisation of every key)."""

    def __init__(self, keys: dict):
        self.keys = keys
        self.dirty: set = set()
        self.fragments: dict = {}

    def changes(self) -> list[tuple[str, str]]:
        """(key text, state JSON) of every key changed since the last ``changes``/``text`` call (the
        changelog's records, ``streaming.state``); their fragments of ``text`` are brought up to date."""
        out = []
        for k in self.dirty:
            name, value = f"{k[0]}|{k[1]}", json.dumps(self.keys[k].to_json(), separators=(",", ":"))
            self.fragments[k] = f'"{name}":{value}'
            out.append((name, value))
        self.dirty.clear()
        return out

    def text(self) -> str:
        self.changes()
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
