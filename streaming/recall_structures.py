"""Recall structures from clicks: item-to-item co-clicks, the tag inverted index, trending.  Pure: no
I/O, no clocks.  The live recall stage (``streaming.recall_stage``) and the replay over the history
run this same code; exactness means both store identical rows (``sassflow.contracts.recall``).

What a stored row is a function of: the **set** of click events (plus the static item-tag catalog),
never their arrival order, so cross-partition interleaving, rebalances and replays agree exactly.

* **Co-click pairs.**  A user's clicks (every scenario), ordered by (event_time, event_id), form a
  sequence; two clicks at most ``pair_window`` positions and ``pair_max_gap_ms`` apart are a pair.
  The pair set is a function of the user's click set: a click that arrives late is inserted where
  it belongs, the pairs it makes are added, and the pairs it pushes ``pair_window + 1`` apart are
  subtracted (a user's events share one partition, so only the producer can make them late).  Pair
  (a before b) counts for item a's neighbours in b's scenario and for b's in a's, in the time tile
  of b.
* **Clicks per item**, in time tiles: per (item, scenario) for trending and the tag index, and over
  all scenarios as the i2i normaliser.
* **Decay** is evaluated at read time: rows hold log-weights (the contract), computed from integer
  tile counts in tile order, so equal count sets give bit-identical floats.

Bounded memory.  Each item keeps a clock: its newest click's tile.  Tiles at or before
``clock - horizon`` are dropped and never counted again (the clock only grows, so a dropped tile
can never re-enter; an addition that old is ignored, as a replay would drop it when the clock
passed).  An item holds at most 2 x ``pair_window`` pair entries per click of its own within the
horizon (plus ``pair_max_gap_ms``, since a pair is tiled at its later click).  A user's sequence keeps the clicks within ``lateness_ms`` of the user's newest click plus
the ``pair_window`` before them; a click older than that (later than the allowed lateness) and a
repeated event (same time and id) are not applied (``add`` says which).
"""
from __future__ import annotations

import bisect
import heapq
import json
import math
from dataclasses import dataclass, field
from typing import Iterable, Mapping

from sortedcontainers import SortedList

from sassflow.contracts.features import HOUR_MS
from sassflow.contracts.recall import RecallRow, i2i_key, tag_key, trending_key
from streaming.aggregate import Ev

DAY_MS = 24 * HOUR_MS
APPLIED, NOT_A_CLICK, DUPLICATE, TOO_LATE = "applied", "not_a_click", "duplicate", "too_late"


@dataclass(frozen=True)
class RecallParams:
    pair_window: int = 10
    pair_max_gap_ms: int = DAY_MS
    tile_ms: int = HOUR_MS
    horizon_ms: int = 30 * DAY_MS
    half_life_ms: int = 7 * DAY_MS  # 0: no decay
    lateness_ms: int = HOUR_MS
    neighbours: int = 100  # i2i row length
    tag_items: int = 200  # tag row length
    trending_items: int = 500  # trending row length

    @property
    def rate_per_tile(self) -> float:
        """Decay rate per tile (ln 2 per half-life); 0 without decay."""
        return math.log(2) * self.tile_ms / self.half_life_ms if self.half_life_ms else 0.0

    @property
    def rate_per_ms(self) -> float:
        return math.log(2) / self.half_life_ms if self.half_life_ms else 0.0

    @property
    def horizon_tiles(self) -> int:
        return max(1, self.horizon_ms // self.tile_ms)

    @classmethod
    def from_settings(cls, settings) -> "RecallParams":
        r = settings.recall
        return cls(pair_window=r.pair_window, pair_max_gap_ms=r.pair_max_gap_ms, tile_ms=r.tile_ms,
                   horizon_ms=r.horizon_ms, half_life_ms=r.half_life_ms,
                   lateness_ms=settings.streaming.allowed_lateness_ms, neighbours=r.neighbours,
                   tag_items=r.tag_items, trending_items=r.trending_items)


def log_weight(tiles: Mapping[int, int], rate_per_tile: float, oldest: int | None = None) -> float | None:
    """log(sum of count * exp(rate * tile)) over the tiles at or after ``oldest``, summed in tile
    order (deterministic); None when no tile counts."""
    order = sorted(t for t in tiles if oldest is None or t >= oldest)
    if not order:
        return None
    top = order[-1]
    total = 0.0
    for t in order:
        total += tiles[t] * math.exp(-rate_per_tile * (top - t))
    return rate_per_tile * top + math.log(total)


def _bump(tiles: dict, tile: int, delta: int) -> None:
    n = tiles.get(tile, 0) + delta
    if n > 0:
        tiles[tile] = n
    else:
        tiles.pop(tile, None)


def _prune(tiles: dict, oldest_kept: int) -> None:
    for t in [t for t in tiles if t < oldest_kept]:
        del tiles[t]


# --------------------------------------------------------------------------- co-click pairs

Click = tuple  # (event_time, event_id, item_id, scenario): a user's sequence sorts by the first two


def insert_click(seq: list, click: Click, window: int, max_gap_ms: int) -> list[tuple[Click, Click, int]] | None:
    """Insert ``click`` into a user's sorted click sequence; the pair changes it causes as
    (earlier, later, +1 | -1), or None when the sequence already holds it."""
    p = bisect.bisect_left(seq, click)
    if p < len(seq) and seq[p] == click:
        return None
    changes = []
    for i in range(max(0, p - window), p):  # pairs now pushed window + 1 apart
        j = i + window
        if j < len(seq) and seq[j][0] - seq[i][0] <= max_gap_ms:
            changes.append((seq[i], seq[j], -1))
    for a in seq[max(0, p - window):p]:
        if click[0] - a[0] <= max_gap_ms:
            changes.append((a, click, 1))
    for b in seq[p:p + window]:
        if b[0] - click[0] <= max_gap_ms:
            changes.append((click, b, 1))
    seq.insert(p, click)
    return changes


@dataclass(slots=True)
class ItemState:
    """One item's tiles: its clicks (all scenarios and per scenario) and its co-click neighbours
    per scenario of the neighbour's click."""

    clock: int = -1  # newest click tile
    swept: int = -1  # the clock at the last sweep of the pair tiles
    clicks: dict = field(default_factory=dict)  # tile -> count
    by_scenario: dict = field(default_factory=dict)  # scenario -> {tile: count}
    pairs: dict = field(default_factory=dict)  # scenario -> {neighbour: {tile: count}}

    def oldest_kept(self, horizon_tiles: int) -> int:
        return self.clock - horizon_tiles + 1

    def advance(self, tile: int, horizon_tiles: int) -> bool:
        """Move the clock to ``tile`` if newer; True when it moved.  What falls out of the horizon
        is swept every quarter horizon (readers skip it meanwhile: a sweep per clock move cost
        O(tiles + neighbours) per click)."""
        if tile <= self.clock:
            return False
        self.clock = tile
        if self.clock - self.swept >= max(1, horizon_tiles // 4):
            self.swept = self.clock
            self._sweep(self.oldest_kept(horizon_tiles))
        return True

    def _sweep(self, lo: int) -> None:
        _prune(self.clicks, lo)
        for tiles in self.by_scenario.values():
            _prune(tiles, lo)
        for neighbours in self.pairs.values():
            for j in list(neighbours):
                _prune(neighbours[j], lo)
                if not neighbours[j]:
                    del neighbours[j]
        self.by_scenario = {s: t for s, t in self.by_scenario.items() if t}
        self.pairs = {s: n for s, n in self.pairs.items() if n}

    def to_json(self) -> list:
        return [self.clock, self.swept, _tiles_json(self.clicks), {s: _tiles_json(t) for s, t in self.by_scenario.items()},
                {s: {str(j): _tiles_json(t) for j, t in n.items()} for s, n in self.pairs.items()}]

    @classmethod
    def from_json(cls, d: list) -> "ItemState":
        return cls(d[0], d[1], _tiles_from(d[2]), {s: _tiles_from(t) for s, t in d[3].items()},
                   {s: {int(j): _tiles_from(t) for j, t in n.items()} for s, n in d[4].items()})


def _tiles_json(tiles: dict) -> list:
    return [x for t in sorted(tiles) for x in (t, tiles[t])]


def _tiles_from(flat: list) -> dict:
    return dict(zip(flat[0::2], flat[1::2]))


# --------------------------------------------------------------------------- the structures


class RecallStructures:
    """The state of every structure, the rows of the keys an event touched, and snapshots."""

    def __init__(self, params: RecallParams, item_tags: Mapping[int, tuple[str, ...]] | None = None):
        self.p = params
        self.item_tags = item_tags or {}
        self.users: dict[int, list] = {}  # user -> sorted clicks
        self.user_newest: dict[int, int] = {}
        self.items: dict[int, ItemState] = {}
        self.ranked: dict[tuple, SortedList] = {}  # ("trending", s) / ("tag", tag, s) -> (-log weight, item)
        self.weight: dict[tuple[int, str], float] = {}  # (item, scenario) -> its entry's log weight
        self.stale_weights: set[tuple[int, str]] = set()  # (item, scenario) whose rank is to refresh
        self.touched: set[str] = set()
        self.dirty_users: set[int] = set()
        self.dirty_items: set[int] = set()
        self.snapshot = RecallSnapshot(self)  # what the checkpoint and the changelog record

    # ------------------------------------------------------------ applying events

    def add(self, ev: Ev) -> str:
        """Apply one event; returns APPLIED or why it was not."""
        if not ev.is_click:
            return NOT_A_CLICK
        p = self.p
        seq = self.users.setdefault(ev.user_id, [])
        newest = self.user_newest.get(ev.user_id)
        if newest is not None and ev.event_time < newest - p.lateness_ms:
            return TOO_LATE
        click = (ev.event_time, ev.event_id, ev.item_id, ev.scenario)
        changes = insert_click(seq, click, p.pair_window, p.pair_max_gap_ms)
        if changes is None:
            return DUPLICATE
        self._count_click(ev.item_id, ev.scenario, ev.event_time // p.tile_ms)
        for a, b, delta in changes:
            if a[2] != b[2]:
                tile = b[0] // p.tile_ms
                self._count_pair(a[2], b[3], b[2], tile, delta)
                self._count_pair(b[2], a[3], a[2], tile, delta)
        if newest is None or ev.event_time > newest:
            self.user_newest[ev.user_id] = newest = ev.event_time
        self._trim_user(seq, newest)
        self.dirty_users.add(ev.user_id)
        return APPLIED

    def _trim_user(self, seq: list, newest: int) -> None:
        k = bisect.bisect_left(seq, (newest - self.p.lateness_ms,))
        if k > self.p.pair_window:
            del seq[:k - self.p.pair_window]

    def _item(self, item_id: int) -> ItemState:
        st = self.items.get(item_id)
        if st is None:
            st = self.items[item_id] = ItemState()
        self.dirty_items.add(item_id)
        return st

    def _count_click(self, item_id: int, scenario: str, tile: int) -> None:
        st = self._item(item_id)
        scenarios = list(st.by_scenario)  # before a sweep may drop some
        self.touched.update(i2i_key(item_id, s) for s in st.pairs)  # the norm or the clock changes them
        if st.advance(tile, self.p.horizon_tiles):
            self.stale_weights.update((item_id, s) for s in scenarios)  # tiles may have left the horizon
        if tile < st.oldest_kept(self.p.horizon_tiles):
            return
        _bump(st.clicks, tile, 1)
        _bump(st.by_scenario.setdefault(scenario, {}), tile, 1)
        self.stale_weights.add((item_id, scenario))

    def _count_pair(self, item_id: int, scenario: str, neighbour: int, tile: int, delta: int) -> None:
        st = self._item(item_id)
        if tile < st.oldest_kept(self.p.horizon_tiles):
            return
        neighbours = st.pairs.setdefault(scenario, {})
        tiles = neighbours.setdefault(neighbour, {})
        _bump(tiles, tile, delta)
        if not tiles:
            del neighbours[neighbour]
        self.touched.add(i2i_key(item_id, scenario))

    def _refresh_ranks(self) -> None:
        """Re-rank the (item, scenario) entries whose clicks changed (once per batch of events, not
        per click: a weight reads every tile of the entry)."""
        rate, horizon = self.p.rate_per_tile, self.p.horizon_tiles
        for item_id, scenario in sorted(self.stale_weights):
            st = self.items[item_id]
            weight = log_weight(st.by_scenario.get(scenario, {}), rate, st.oldest_kept(horizon))
            self._rerank(item_id, scenario, weight)
        self.stale_weights.clear()

    def _rerank(self, item_id: int, scenario: str, weight: float | None) -> None:
        """Move (item, scenario) to ``weight`` in its trending and tag lists (None: out of them)."""
        old = self.weight.pop((item_id, scenario), None)
        if old == weight:
            if weight is not None:
                self.weight[(item_id, scenario)] = weight
            return
        if weight is not None:
            self.weight[(item_id, scenario)] = weight
        for name in [("trending", scenario)] + [("tag", t, scenario) for t in self.item_tags.get(item_id, ())]:
            ranked = self.ranked.get(name)
            if ranked is None:
                ranked = self.ranked[name] = SortedList()
            if old is not None:
                ranked.remove((-old, item_id))
            if weight is not None:
                ranked.add((-weight, item_id))
            self.touched.add(trending_key(scenario) if name[0] == "trending" else tag_key(name[1], scenario))

    # ------------------------------------------------------------ rows

    def row(self, key: str) -> RecallRow | None:
        """The stored value of ``key`` now (None: the key has no row)."""
        kind, *rest = key.split("|")
        if kind == "i2i":
            return self._i2i_row(int(rest[0]), rest[1])
        name = ("trending", rest[0]) if kind == "trending" else ("tag", rest[0], rest[1])
        size = self.p.trending_items if kind == "trending" else self.p.tag_items
        ranked = self.ranked.get(name)
        if not ranked:
            return None
        top = ranked[:size]
        return _row([i for _, i in top], [-w for w, _ in top])

    def _i2i_row(self, item_id: int, scenario: str) -> RecallRow | None:
        st = self.items.get(item_id)
        neighbours = st.pairs.get(scenario) if st else None
        if not neighbours:
            return None
        rate, lo = self.p.rate_per_tile, st.oldest_kept(self.p.horizon_tiles)
        weights = ((log_weight(t, rate, lo), j) for j, t in neighbours.items())
        best = heapq.nsmallest(self.p.neighbours, ((-w, j) for w, j in weights if w is not None))
        if not best:
            return None
        return _row([j for _, j in best], [-w for w, _ in best], log_weight(st.clicks, rate, lo))

    def take_rows(self) -> dict[str, RecallRow | None]:
        """The rows of every key touched since the last call."""
        self._refresh_ranks()
        keys, self.touched = self.touched, set()
        return {k: self.row(k) for k in sorted(keys)}

    def all_rows(self) -> dict[str, RecallRow]:
        self._refresh_ranks()
        self.touched.clear()
        keys = [i2i_key(i, s) for i, st in self.items.items() for s in st.pairs]
        keys += [trending_key(n[1]) if n[0] == "trending" else tag_key(n[1], n[2]) for n in self.ranked]
        rows = {k: self.row(k) for k in sorted(keys)}
        return {k: r for k, r in rows.items() if r is not None}

    # ------------------------------------------------------------ snapshots

    def load_json(self, d: dict) -> None:
        """Restore from the JSON object the fragments make up (the ranked lists are rebuilt)."""
        for k, v in d.items():
            if k[0] == "u":
                self.user_newest[int(k[1:])] = v[0]
                self.users[int(k[1:])] = [tuple(c) for c in v[1]]
            else:
                self.items[int(k[1:])] = ItemState.from_json(v)
        self.stale_weights.update((i, s) for i, st in self.items.items() for s in st.by_scenario)
        self._refresh_ranks()
        self.touched.clear()
        self.dirty_users.update(self.users)  # the next snapshot holds everything restored
        self.dirty_items.update(self.items)


def _row(items: list[int], scores: list[float], norm: float = 0.0) -> RecallRow:
    import numpy as np

    return RecallRow(np.asarray(items, dtype=np.int64), np.asarray(scores, dtype=np.float64), norm)


def batch_recall(events: Iterable[Ev], params: RecallParams,
                 item_tags: Mapping[int, tuple[str, ...]] | None = None) -> dict[str, RecallRow]:
    """The batch driver: every event, then every row (what the store must hold after a replay)."""
    structures = RecallStructures(params, item_tags)
    for ev in events:
        structures.add(ev)
    return structures.all_rows()


class RecallSnapshot:
    """The structures' state as changelog records and checkpoint text, re-encoding only the users and
    items changed since the last call (the interface of ``streaming.aggregate``'s snapshots, so the
    recall stage's state goes through the same changelog and checkpoint code as the feature state)."""

    def __init__(self, st: "RecallStructures"):
        self.st = st
        self.fragments: dict[str, str] = {}

    @property
    def dirty(self) -> bool:
        return bool(self.st.dirty_users or self.st.dirty_items)

    def changes(self) -> list[tuple[str, str]]:
        st, out = self.st, []
        for u in st.dirty_users:
            out.append((f"u{u}", json.dumps([st.user_newest[u], [list(c) for c in st.users.get(u, [])]],
                                            separators=(",", ":"))))
        for i in st.dirty_items:
            out.append((f"i{i}", json.dumps(st.items[i].to_json(), separators=(",", ":"))))
        st.dirty_users.clear()
        st.dirty_items.clear()
        for name, value in out:
            self.fragments[name] = f'"{name}":{value}'
        return out

    def text(self) -> str:
        self.changes()
        return "{" + ",".join(self.fragments.values()) + "}"
