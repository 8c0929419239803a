"""The pure recall structures: pair rules, exactness under any arrival order, bounded memory, decay."""
from __future__ import annotations

import math
import random

import pytest

from sassflow.contracts.recall import RecallRow, i2i_key, tag_key, trending_key
from streaming.aggregate import Ev
from streaming.recall_structures import (APPLIED, DUPLICATE, HOUR_MS, TOO_LATE, RecallParams, RecallStructures,
                                         batch_recall, insert_click)
from streaming.replay import frame_to_evs
from streaming.sources import SyntheticSource, events_frame

T0 = 1_700_000_000_000 // HOUR_MS * HOUR_MS  # on a tile boundary: decay counts from the tile start


def click(user, item, t, scenario="drama", eid=None):
    return Ev(eid or f"e-{user}-{item}-{t}", user, item, scenario, True, t)


def clicks(n_events=6000, seed=3, gap_ms=60_000.0):
    src = SyntheticSource(n_users=60, n_items=80, n_events=n_events, seed=seed, mean_gap_ms=gap_ms)
    return [e for e in frame_to_evs(events_frame(src.events())) if e.is_click]


def test_pairs_are_the_sequence_neighbours_whatever_the_arrival_order():
    seq, changes = [], []
    for c in [(3, "c", 30, "s"), (1, "a", 10, "s"), (2, "b", 20, "s")]:  # b arrives last, between a and c
        changes += insert_click(seq, c, window=1, max_gap_ms=10)
    net = {}
    for a, b, d in changes:
        net[(a[2], b[2])] = net.get((a[2], b[2]), 0) + d
    assert {k: v for k, v in net.items() if v} == {(10, 20): 1, (20, 30): 1}  # (a, c) was added, then removed
    assert [c[2] for c in seq] == [10, 20, 30]
    assert insert_click(seq, (2, "b", 20, "s"), 1, 10) is None  # the same event again


def test_i2i_row_counts_co_clicks_per_scenario_of_the_neighbour():
    p = RecallParams(pair_window=2, half_life_ms=0)
    evs = [click(1, 10, T0), click(1, 11, T0 + 1, "comedy"), click(1, 12, T0 + 2),
           click(2, 10, T0), click(2, 12, T0 + 5)]
    rows = batch_recall(evs, p)
    row = rows[i2i_key(10, "drama")]
    assert row.items.tolist() == [12] and math.exp(row.scores[0]) == pytest.approx(2.0)
    assert math.exp(row.norm) == pytest.approx(2.0)  # item 10's own clicks
    assert rows[i2i_key(10, "comedy")].items.tolist() == [11]
    assert rows[i2i_key(12, "drama")].items.tolist() == [10]  # 11 was clicked in comedy
    assert rows[i2i_key(12, "comedy")].items.tolist() == [11]


@pytest.mark.parametrize("half_life_ms,horizon_ms", [(0, 10**12), (2 * HOUR_MS, 6 * HOUR_MS)])
def test_any_interleaving_and_late_arrivals_give_identical_rows(half_life_ms, horizon_ms):
    evs = clicks()
    p = RecallParams(pair_window=3, pair_max_gap_ms=2 * HOUR_MS, horizon_ms=horizon_ms,
                     half_life_ms=half_life_ms, lateness_ms=30 * 60_000)
    tags = {i: (f"t{i % 4}", f"u{i % 3}") for i in range(80)}
    expected = batch_recall(sorted(evs, key=lambda e: (e.event_time, e.event_id)), p, tags)
    assert any(k.startswith("i2i") for k in expected) and any(k.startswith("tags") for k in expected)
    rng = random.Random(0)
    for trial in range(3):
        # cross-user interleaving: each user's clicks in order, users merged at random ...
        by_user: dict[int, list] = {}
        for e in evs:
            by_user.setdefault(e.user_id, []).append(e)
        order = [u for u, es in by_user.items() for _ in es]
        rng.shuffle(order)
        pos = dict.fromkeys(by_user, 0)
        mixed = []
        for u in order:
            mixed.append(by_user[u][pos[u]])
            pos[u] += 1
        # ... and within a user, clicks delayed by up to 20 minutes (inside the allowed lateness)
        mixed = sorted(mixed, key=lambda e: e.event_time + rng.randrange(0, 20 * 60_000))
        st = RecallStructures(p, tags)
        assert all(st.add(e) == APPLIED for e in mixed)
        assert st.all_rows() == expected


def test_incremental_rows_and_a_restored_checkpoint_end_where_the_batch_ends():
    evs = clicks(4000, seed=5)
    p = RecallParams(pair_window=2, horizon_ms=3 * HOUR_MS, half_life_ms=HOUR_MS)
    tags = {i: (f"t{i % 5}",) for i in range(80)}
    expected = batch_recall(evs, p, tags)
    store: dict[str, RecallRow] = {}
    st = RecallStructures(p, tags)
    for k, e in enumerate(evs):
        st.add(e)
        if k % 97 == 0:
            store.update(st.take_rows())
        if k == len(evs) // 3:
            st.snapshot.changes()  # an earlier changelog commit: the checkpoint text still holds it all
        if k == len(evs) // 2:  # checkpoint, "crash", restore
            import json

            restored = RecallStructures(p, tags)
            restored.load_json(json.loads(st.snapshot.text()))
            store.update(st.take_rows())
            st = restored
    store.update(st.take_rows())
    assert {k: r for k, r in store.items() if r is not None} == expected


def test_memory_per_item_is_bounded_by_the_horizon_and_the_window():
    evs = clicks(20000, seed=7, gap_ms=20_000.0)
    p = RecallParams(pair_window=2, horizon_ms=2 * HOUR_MS, pair_max_gap_ms=HOUR_MS, lateness_ms=0)
    st = RecallStructures(p)
    clicks_in_horizon: dict[int, list] = {}
    for e in evs:
        st.add(e)
        clicks_in_horizon.setdefault(e.item_id, []).append(e.event_time // p.tile_ms)
    horizon = p.horizon_tiles
    for item, state in st.items.items():
        kept_from = state.clock - horizon - horizon // 4  # swept every quarter horizon
        tiles = [t for n in state.pairs.values() for ts in n.values() for t in ts] + list(state.clicks)
        assert min(tiles) >= kept_from
        gap = p.pair_max_gap_ms // p.tile_ms  # a pair's tile is its later click's: the item's may be older
        recent = sum(1 for t in clicks_in_horizon[item] if t >= kept_from - gap)
        assert sum(len(n) for n in state.pairs.values()) <= 2 * p.pair_window * recent
    for u, seq in st.users.items():  # lateness 0: a user keeps the window before the newest click
        assert len(seq) <= p.pair_window + sum(1 for c in seq if c[0] == st.user_newest[u])


def test_duplicates_and_clicks_later_than_the_lateness_are_not_applied():
    p = RecallParams(lateness_ms=HOUR_MS)
    st = RecallStructures(p)
    assert st.add(click(1, 10, T0)) == APPLIED
    assert st.add(click(1, 10, T0)) == DUPLICATE
    assert st.add(click(1, 11, T0 + 3 * HOUR_MS)) == APPLIED
    assert st.add(click(1, 12, T0)) == TOO_LATE
    assert st.add(Ev("imp", 1, 12, "drama", False, T0)) != APPLIED


def test_trending_and_tag_rows_rank_by_decayed_clicks_at_read_time():
    p = RecallParams(half_life_ms=HOUR_MS)
    old_hits = [click(u, 1, T0) for u in range(8)]  # 8 clicks, 5 half-lives ago
    new_hits = [click(u, 2, T0 + 5 * HOUR_MS) for u in range(2)]  # 2 clicks now
    rows = batch_recall(old_hits + new_hits, p, {1: ("war",), 2: ("war",)})
    row = rows[trending_key("drama")]
    assert row.items.tolist() == [2, 1]  # 2 > 8 / 2**5
    now = T0 + 5 * HOUR_MS
    decayed = [math.exp(s - p.rate_per_ms * now) for s in row.scores]
    assert decayed == pytest.approx([2.0, 8 / 32])
    assert rows[tag_key("war", "drama")] == row
    no_decay = batch_recall(old_hits + new_hits, RecallParams(half_life_ms=0), {})
    assert no_decay[trending_key("drama")].items.tolist() == [1, 2]
