"""The co-click table (training.co_click) and the residual rankers (training.rankers)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from training.co_click import CoClicks, co_click_table
from training.rankers import (RECALL_BRANCHES, ROW_COLUMNS, USER_COLUMNS, CoarseRanker, FineRanker, RankerConfig,
                              dense_matrix, load_rankers, save_rankers)


def test_pairs_are_later_clicks_of_the_same_user_within_the_window():
    # user 1 clicks 1, 2, 3, 1 (times out of order in the arrays); user 2 clicks 2, 3
    user = np.array([1, 1, 1, 1, 2, 2])
    item = np.array([3, 1, 2, 1, 2, 3])
    time = np.array([30, 10, 20, 40, 5, 6])
    t = co_click_table(user, item, time, n_items=4, window=2)
    span = 5
    pairs = {(int(k // span), int(k % span)): float(w) for k, w in zip(t.keys, t.weights)}
    # 1->2 and 1->3 (window 2 from the first 1), 2->3 twice (both users), 2->1, 3->1; no 1->1, nothing
    # across users (user 1's last click 1 -> user 2's 2 is not a pair)
    assert set(pairs) == {(1, 2), (1, 3), (2, 3), (2, 1), (3, 1)}
    n = {1: 2, 2: 2, 3: 2}
    assert pairs[(2, 3)] == pytest.approx(2 / np.sqrt(n[2] * n[3]))
    assert pairs[(1, 2)] == pytest.approx(1 / np.sqrt(n[1] * n[2]))
    assert (np.diff(t.keys) > 0).all()


def test_keep_holds_each_source_items_best_neighbours():
    rng = np.random.default_rng(0)
    user, item = rng.integers(0, 50, 5000), rng.integers(1, 30, 5000)
    full = co_click_table(user, item, np.arange(5000), 29, window=5, keep=1000)
    top = co_click_table(user, item, np.arange(5000), 29, window=5, keep=3)
    src = full.keys // 30
    for i in np.unique(src):
        w = np.sort(full.weights[src == i])[::-1]
        mine = np.sort(top.weights[top.keys // 30 == i])[::-1]
        np.testing.assert_allclose(mine, w[:3])


def test_scores_sum_the_weights_from_the_requests_sequence():
    t = CoClicks(4, np.array([1 * 5 + 2, 1 * 5 + 3, 3 * 5 + 2], np.int64), np.array([0.5, 0.25, 2.0], np.float32))
    recent = np.array([[1, 3, 0], [0, 0, 0]])  # request 1 has no history (padding only)
    owner = np.array([0, 0, 0, 1])
    item = np.array([2, 3, 4, 2])
    np.testing.assert_allclose(t.scores(recent, owner, item), [2.5, 0.25, 0.0, 0.0])
    # a candidate's value is its own: scoring a subset in another order gives the same values
    np.testing.assert_allclose(t.scores(recent, owner[[2, 0]], item[[2, 0]]), [0.0, 2.5])
    assert (CoClicks.empty(4).scores(recent, owner, item) == 0).all()


def _inputs(cfg, n, rng):
    cols = {name: rng.random(n) for name in USER_COLUMNS + ROW_COLUMNS}
    cols["recall_score"] = rng.normal(size=n)
    return cols, torch.from_numpy(dense_matrix(cols, rng.integers(0, 2, n), cfg.branches))


def test_untrained_residual_rankers_are_the_recall_order():
    """Coarse = recall weight x recall score + 0, fine = coarse logit + 0: training starts from the recall
    order and learns departures from it."""
    torch.manual_seed(0)
    rng = np.random.default_rng(1)
    cfg = RankerConfig(n_items=20, n_scenarios=2, seq_len=4, branches=list(RECALL_BRANCHES), residual=True,
                       recall_weight=10.0)
    coarse, fine = CoarseRanker(cfg), FineRanker(cfg)
    for model in (coarse, fine):
        model.norm.fit(rng.random((50, cfg.n_dense)).astype(np.float32))
        model.eval()
    cols, dense = _inputs(cfg, 40, rng)
    scen = torch.zeros(40, dtype=torch.long)
    seq = torch.from_numpy(rng.integers(0, 21, (1, 4)))
    args = (seq, seq, torch.zeros(40, dtype=torch.long), torch.from_numpy(rng.integers(1, 21, 40)), scen, dense)
    with torch.inference_mode():
        c = coarse(dense, scen)
        f = fine(*args, base=c)
    np.testing.assert_allclose(c.numpy(), 10.0 * cols["recall_score"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(f.numpy(), c.numpy(), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="base"):
        fine(*args)


def test_residual_rankers_and_the_co_click_table_round_trip(tmp_path):
    torch.manual_seed(0)
    cfg = RankerConfig(n_items=20, n_scenarios=2, seq_len=4, branches=list(RECALL_BRANCHES), residual=True)
    table = co_click_table(np.arange(40) % 5, np.arange(40) % 20 + 1, np.arange(40), 20, window=3)
    save_rankers(tmp_path, cfg, CoarseRanker(cfg), FineRanker(cfg), np.arange(1, 21),
                 np.zeros((2, 21), np.int64), table)
    loaded = load_rankers(tmp_path)
    assert loaded.cfg.residual and len(loaded.co_clicks.keys) == len(table.keys) > 0
    np.testing.assert_array_equal(loaded.co_clicks.keys, table.keys)
    np.testing.assert_array_equal(loaded.co_clicks.weights, table.weights)


def test_scores_and_head_match_the_pairwise_definition_across_chunks():
    """The lookup from the clicks' side equals summing w(click, candidate) over every click (repeats
    count each time) and over the first ``head`` clicks, whatever the chunking of the candidates."""
    rng = np.random.default_rng(3)
    n_items = 40
    t = co_click_table(rng.integers(0, 30, 3000), rng.integers(1, n_items + 1, 3000), np.arange(3000), n_items,
                       window=4, keep=8)
    w = {(int(k // (n_items + 1)), int(k % (n_items + 1))): float(v) for k, v in zip(t.keys, t.weights)}
    recent = rng.integers(0, n_items + 1, (6, 7))
    recent[0, :3] = [5, 5, 0]  # a repeated click, then padding
    recent[1] = 0  # no history
    owner = rng.integers(0, 6, 200)  # unsorted, some requests without candidates
    item = rng.integers(1, n_items + 1, 200)

    def pairwise(clicks) -> np.ndarray:
        return np.array([sum(w.get((int(c), int(i)), 0.0) for c in recent[o][:clicks] if c > 0)
                         for o, i in zip(owner, item)])

    every, first = t.scores_and_head(recent, owner, item, 3, chunk=17)
    np.testing.assert_allclose(t.scores_and_head(recent, owner, item, 3, chunk=1 << 18), (every, first), rtol=1e-9)
    np.testing.assert_allclose(every, pairwise(7), rtol=1e-6)
    np.testing.assert_allclose(first, pairwise(3), rtol=1e-6)
    assert (every > 0).sum() > 20 and (first > 0).sum() > 5  # the sample hits the table


def test_dense_and_sorted_sums_agree():
    """Both ways of summing a request's table rows (a dense count for small catalogs, a sort for big
    ones) give the same sums, for repeated keys, keys without entries and keys never asked."""
    from training.co_click import _sums_at

    rng = np.random.default_rng(5)
    keys, w = rng.integers(0, 300, 2000), rng.random(2000)
    first = np.where(rng.random(2000) < 0.3, w, 0.0)
    q = rng.integers(0, 400, 500)
    small, big = _sums_at(keys, w, first, q, 400), _sums_at(keys, w, first, q, 1 << 30)  # dense, sorted
    np.testing.assert_allclose(small, big, rtol=1e-9, atol=1e-12)
    assert (small[0][q >= 300] == 0).all() and (small[0] > 0).sum() > 300
