"""Ranking lists: the recall stage's candidates of each request, with point-in-time features and labels.

A *list* is one request of an evaluated split (``training.data``: a (user, scenario) with clicks in
the split, as of the user's first event of the split); its candidates are the recall model's top
``n_candidates`` items of the scenario's catalog, items the user had before the split left out (the
recall protocol of BENCHMARKS.md).  Labels: a candidate clicked in the split is 1, else 0.

Features as of the list's time t (the user's first event of the split), never the list's own events:

* the user's click sequences (this scenario, all scenarios) -- the evaluated split's queries;
* user windows: impressions / clicks in 1h / 24h / 7d of (user, scenario), CTRs, the 7d totals over
  every scenario and this scenario's share of the clicks;
* item windows: impressions / clicks of (item, scenario) in 1h / 24h / 7d, CTRs, ``trending``;
* the item's clicks in the scenario over the train split (what the recall model was trained on, the
  ranker artifact ships them: a popularity prior beyond the windows' 7 days);
* the recall score and branch;
* the candidate's co-click weights from the user's recent clicks (``training.rankers.co_click_columns``:
  the table of the train split's clicks, as the item prior).

Windows are ``features.windows``' (``window_start_ms`` <= event time < t, the tiles a reader sums as
of t), counted over every event before the test split (``history``): other users' events of the
evaluated split count when they happened before t (they are in the past of the request), no
test-period event is ever counted, and the user's own events of the split are at or after t.

Training lists (``exposure``): the ranker trains on the validation split's requests, scored by the
recall model trained on the train split (so recall scores are as honest as at serving: a model's
scores on its own training clicks are inflated).  Rows: every impression of the request in the split
(label: clicked), plus, with ``exposure_negatives`` > 0, that many recalled candidates the user was
not shown (label 0): at serving the ranker scores recalled items nobody showed, which impressions
alone never cover.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from sassflow.contracts.features import (HOUR_MS, MINUTE_MS, SINCE_CLICK, WINDOW_1H, WINDOW_7D, WINDOW_24H, WINDOWS,
                                         window_start_ms)
from training.data import TEST, TRAIN, VAL, NO_TIME, TrainingData, split_by_user_time
from training.evaluate import Scorer
from training.co_click import CoClicks, co_click_table
from training.rankers import ITEM_PRIOR, RECALL_SCORE, USER_COLUMNS, co_click_columns

SPLITS = {"train": TRAIN, "val": VAL, "test": TEST}
RECALL_BRANCH = "sass"  # what the SASS candidates are labelled (serving.recall.AnnRecall.name)


@dataclass
class EventArrays:
    """The prepared events as vocabulary-index arrays (the same filtering and split as ``prepare``)."""

    user: np.ndarray
    scenario: np.ndarray
    item: np.ndarray
    time: np.ndarray
    click: np.ndarray
    split: np.ndarray


def event_arrays(events: pd.DataFrame, data: TrainingData) -> EventArrays:
    ev = events[events["scenario"].isin(data.scenarios)].reset_index(drop=True)
    return EventArrays(
        user=data.users.index(ev["user_id"].to_numpy(np.int64)),
        scenario=pd.Categorical(ev["scenario"], categories=data.scenarios).codes.astype(np.int64),
        item=data.items.index(ev["item_id"].to_numpy(np.int64)),
        time=ev["event_time"].to_numpy(np.int64),
        click=(ev["event_type"] == "click").to_numpy(),
        split=split_by_user_time(ev))


class WindowCounter:
    """Events per key in a time window: ``window(key, t, w)`` = #events of ``key`` in [w's start, t),
    vectorised (two searchsorted over a (key, time-rank) sorted array).

    ``order``: a permutation that sorts the queries by (key, t).  Millions of candidate rows in list order
    search the whole array once per list; in (key, t) order the searches walk it once (~5x faster).  The
    times are searched in the caller's order, where a list's rows share theirs."""

    def __init__(self, key: np.ndarray, time: np.ndarray):
        self.times = np.unique(time)
        self.span = np.int64(len(self.times) + 1)
        self.sorted = np.sort(key.astype(np.int64) * self.span + np.searchsorted(self.times, time))

    def window(self, key: np.ndarray, t: np.ndarray, window, order: np.ndarray | None = None) -> np.ndarray:
        """#events of ``key`` in [window start, t): the key's events before t minus those before the start."""
        base = key.astype(np.int64) * self.span
        end = base + np.searchsorted(self.times, t)
        start = base + np.searchsorted(self.times, window_start_ms(window, t))
        if order is None:
            return np.searchsorted(self.sorted, end) - np.searchsorted(self.sorted, start)
        out = np.empty(len(key), np.int64)
        out[order] = np.searchsorted(self.sorted, end[order]) - np.searchsorted(self.sorted, start[order])
        return out

    def last_before(self, key: np.ndarray, t: np.ndarray) -> np.ndarray:
        """The time of each key's newest event before t (-1: none)."""
        base = key.astype(np.int64) * self.span
        pos = np.searchsorted(self.sorted, base + np.searchsorted(self.times, t), side="left") - 1
        hit = self.sorted[np.maximum(pos, 0)] if len(self.sorted) else np.zeros(len(key), np.int64)
        ok = (pos >= 0) & (hit // self.span == key)
        return np.where(ok, self.times[np.minimum(hit % self.span, max(len(self.times) - 1, 0))]
                        if len(self.times) else -1, -1)


def since_click_ms(last_click: np.ndarray, t: np.ndarray) -> np.ndarray:
    """``features.windows.since_click_ms`` from the newest click's time: to the start of its minute
    tile within the last hour, of its hour tile within 7 days, NaN beyond (or without a click)."""
    in_hour = (last_click >= 0) & (last_click >= window_start_ms(WINDOW_1H, t))
    in_week = (last_click >= 0) & (last_click >= window_start_ms(WINDOW_7D, t))
    tile = np.where(in_hour, last_click // MINUTE_MS * MINUTE_MS, last_click // HOUR_MS * HOUR_MS)
    return np.where(in_week, (t - tile).astype(np.float64), np.nan)


def _window_columns(imps: WindowCounter, clks: WindowCounter, key: np.ndarray, t: np.ndarray,
                    order: np.ndarray | None = None) -> dict:
    """The ``features.windows.scenario_window_features`` of keys as of t (+ ``trending``)."""
    out = {}
    for w in WINDOWS:
        out[f"imp_{w.name}"] = imps.window(key, t, w, order).astype(np.float64)
        out[f"clk_{w.name}"] = clks.window(key, t, w, order).astype(np.float64)
    for w in (WINDOW_24H, WINDOW_7D):
        i, c = out[f"imp_{w.name}"], out[f"clk_{w.name}"]
        out[f"ctr_{w.name}"] = np.where(i > 0, c / np.maximum(i, 1), 0.0)
    out["trending"] = (out[f"clk_{WINDOW_1H.name}"] + 1) / (out[f"clk_{WINDOW_24H.name}"] / WINDOW_24H.tiles + 1)
    return out


class PointInTime:
    """Window features of users and items as of any time, from the events before the test split."""

    def __init__(self, ev: EventArrays, n_items: int, n_scenarios: int):
        h = ev.split < TEST
        self.S = n_scenarios
        us = ev.user[h] * n_scenarios + ev.scenario[h]
        its = ev.item[h] * n_scenarios + ev.scenario[h]
        imp, clk = ~ev.click[h], ev.click[h]
        t = ev.time[h]
        self.user_imps, self.user_clks = WindowCounter(us[imp], t[imp]), WindowCounter(us[clk], t[clk])
        self.item_imps, self.item_clks = WindowCounter(its[imp], t[imp]), WindowCounter(its[clk], t[clk])
        self.all_imps = WindowCounter(ev.user[h][imp], t[imp])
        self.all_clks = WindowCounter(ev.user[h][clk], t[clk])

    def user_columns(self, user: np.ndarray, scenario: np.ndarray, t: np.ndarray) -> dict[str, np.ndarray]:
        cols = _window_columns(self.user_imps, self.user_clks, user * self.S + scenario, t)
        out = {f"user_{k}": v for k, v in cols.items() if f"user_{k}" in USER_COLUMNS}
        out["user_total_imp_7d"] = self.all_imps.window(user, t, WINDOW_7D).astype(np.float64)
        out["user_total_clk_7d"] = self.all_clks.window(user, t, WINDOW_7D).astype(np.float64)
        out[f"user_{SINCE_CLICK.name}"] = since_click_ms(self.user_clks.last_before(user * self.S + scenario, t), t)
        out["user_scenario_share"] = np.where(out["user_total_clk_7d"] > 0, out[f"user_clk_{WINDOW_7D.name}"]
                                              / np.maximum(out["user_total_clk_7d"], 1), 0.0)
        return out

    def item_columns(self, item: np.ndarray, scenario: np.ndarray, t: np.ndarray) -> dict[str, np.ndarray]:
        key = item * self.S + scenario
        cols = _window_columns(self.item_imps, self.item_clks, key, t, np.lexsort((t, key)))
        return {f"item_{k}": v for k, v in cols.items()}


ROW_FIELDS = ("owner", "item", "label", "shown", "candidate", "sampled", "recall_score", "recall_rank", "branch")


@dataclass
class RankingLists:
    """Requests (``lists``) and their candidate rows, flattened (``rows``: ``owner`` = list index)."""

    user: np.ndarray  # [n_lists] user indices
    scenario: np.ndarray  # [n_lists]
    recent: np.ndarray  # [n_lists, L] item indices, this scenario's clicks, newest first
    recent_all: np.ndarray  # [n_lists, L]
    user_cols: dict[str, np.ndarray]  # USER_COLUMNS, [n_lists]
    n_targets: np.ndarray  # [n_lists] clicks of the request in the split (found by recall or not)
    owner: np.ndarray  # [n_rows]
    item: np.ndarray  # [n_rows] item indices
    label: np.ndarray  # [n_rows] 1 = clicked in the split
    shown: np.ndarray  # [n_rows] an impression of the request in the split
    candidate: np.ndarray  # [n_rows] among the recall stage's top n_candidates
    sampled: np.ndarray  # [n_rows] a candidate drawn as a negative (training lists)
    recall_score: np.ndarray  # [n_rows]
    recall_rank: np.ndarray  # [n_rows] position in the recall order (evaluation only, never a feature)
    item_cols: dict[str, np.ndarray]  # ITEM_COLUMNS and ITEM_PRIOR, [n_rows]
    branch: np.ndarray = field(default=None)  # [n_rows] index into the ranker's branches

    @property
    def n_lists(self) -> int:
        return len(self.scenario)

    def row_columns(self) -> dict[str, np.ndarray]:
        """The per-row named columns of ``training.rankers.dense_matrix`` (the user's are per list)."""
        return {**self.item_cols, RECALL_SCORE: self.recall_score}

    def take_rows(self, rows: np.ndarray) -> "RankingLists":
        """The same lists with only the rows ``rows`` (sorted indices)."""
        per_row = {k: getattr(self, k)[rows] for k in ROW_FIELDS}
        return RankingLists(**{**self.__dict__, **per_row, "item_cols": {k: v[rows] for k, v in self.item_cols.items()}})

    def take_lists(self, lists: np.ndarray) -> "RankingLists":
        """The lists ``lists`` (indices) and their rows, renumbered."""
        lists = np.asarray(lists, np.int64)
        new = np.full(self.n_lists, -1, np.int64)
        new[lists] = np.arange(len(lists))
        rows = np.flatnonzero(new[self.owner] >= 0)
        rows = rows[np.argsort(new[self.owner[rows]], kind="stable")]
        per_row = {k: getattr(self, k)[rows] for k in ROW_FIELDS if k != "owner"}
        return RankingLists(user=self.user[lists], scenario=self.scenario[lists], recent=self.recent[lists], recent_all=self.recent_all[lists],
                            user_cols={k: v[lists] for k, v in self.user_cols.items()}, n_targets=self.n_targets[lists],
                            owner=new[self.owner[rows]], item_cols={k: v[rows] for k, v in self.item_cols.items()},
                            **per_row)


def _split_pairs(ev: EventArrays, code: int, queries: dict, n_users: int, S: int, kind: np.ndarray):
    """(query row, item index) of the split's events of kind ``kind`` in the query's scenario."""
    m = (ev.split == code) & kind
    row_of = np.full((n_users + 1) * S, -1, np.int64)  # (user, scenario) -> query row
    row_of[queries["user"] * S + queries["scenario"]] = np.arange(len(queries["user"]))
    r = row_of[ev.user[m] * S + ev.scenario[m]]
    keep = r >= 0
    return np.unique(np.stack([r[keep], ev.item[m][keep]], 1), axis=0).reshape(-1, 2)


def _scores_of(scorer: Scorer, data: TrainingData, split: str, k: int, rows: np.ndarray) -> torch.Tensor:
    es = data.evals[split]
    return scorer(k, {n: v[rows] for n, v in es.queries.items()}, data.catalogs[k]).float()


def train_co_clicks(ev: EventArrays, n_items: int) -> CoClicks:
    """The co-click table of the train split's clicks (what the recall model and the item prior see)."""
    m = (ev.split == TRAIN) & ev.click
    return co_click_table(ev.user[m], ev.item[m], ev.time[m], n_items)


def build_lists(data: TrainingData, ev: EventArrays, pit: PointInTime, co_clicks: CoClicks, scorer: Scorer,
                split: str, n_candidates: int, exposure_negatives: int | None = None, seed: int = 0,
                only: np.ndarray | None = None, chunk: int = 1024) -> RankingLists:
    """The ranking lists of ``split`` (``data.evals[split]``'s requests).

    ``exposure_negatives`` None: evaluation lists (rows = the top ``n_candidates``); else training lists,
    rows: the request's impressions in the split (``shown``), its clicked candidates, and
    ``exposure_negatives`` candidates drawn uniformly from the others (``sampled``, shown or not: a
    uniform draw keeps a pointwise model's ranking unbiased).  ``only``: a
    boolean mask over the split's requests to build (default all); the lists keep the split's numbering
    until the requests without targets are dropped at the end."""
    es, code = data.evals[split], SPLITS[split]
    q = es.queries
    n_q, n_items = len(q["user"]), len(data.items)
    first = np.full(len(data.users) + 1, NO_TIME, np.int64)
    np.minimum.at(first, ev.user[ev.split == code], ev.time[ev.split == code])
    as_of = first[q["user"]]
    clicked = _split_pairs(ev, code, q, len(data.users), data.n_scenarios, ev.click)
    shown = _split_pairs(ev, code, q, len(data.users), data.n_scenarios, ~ev.click)
    key = lambda rows, items: rows.astype(np.int64) * (n_items + 1) + items  # noqa: E731
    click_keys, shown_keys = np.unique(key(clicked[:, 0], clicked[:, 1])), np.unique(key(shown[:, 0], shown[:, 1]))
    rng = np.random.default_rng(seed)
    parts = []
    for k in range(data.n_scenarios):
        catalog = data.catalogs[k]
        excluded = es.excluded[k]
        rows_k = np.flatnonzero((q["scenario"] == k) & (True if only is None else only))
        for lo in range(0, len(rows_k), chunk):
            r = rows_k[lo:lo + chunk]
            parts.append(_chunk_rows(scorer, data, split, k, r, catalog, excluded, n_candidates, exposure_negatives,
                                     click_keys, shown_keys, key, rng))
    owner, item, score, rank, sampled = (np.concatenate([p[j] for p in parts]) if parts else np.zeros(0, np.int64)
                                         for j in range(5))
    k_of = key(owner, item)
    # the split's clicks on items the user had not seen before it (es.targets: what recall is judged on)
    n_targets = np.bincount(np.concatenate([t[:, 0] for t in es.targets] + [np.zeros(0, np.int64)]),
                            minlength=n_q)
    lists = RankingLists(
        user=q["user"].astype(np.int64), scenario=q["scenario"].astype(np.int64), recent=q["recent_clicks"], recent_all=q["recent_clicks_all"],
        user_cols=pit.user_columns(q["user"], q["scenario"], as_of), n_targets=n_targets,
        owner=owner, item=item, label=np.isin(k_of, click_keys).astype(np.float32), shown=np.isin(k_of, shown_keys),
        candidate=rank < n_candidates, sampled=sampled.astype(bool), recall_score=score.astype(np.float32),
        recall_rank=rank,
        item_cols={**pit.item_columns(item, q["scenario"][owner], as_of[owner]),
                   ITEM_PRIOR: data.item_clicks[q["scenario"][owner], item].astype(np.float64),
                   **co_click_columns(co_clicks, q["recent_clicks"], q["recent_clicks_all"], owner, item)},
        branch=np.zeros(len(owner), np.int64))
    keep = np.flatnonzero((lists.n_targets > 0) & (True if only is None else only))  # a request whose clicks were all seen before has no target
    return lists.take_lists(keep)


def _chunk_rows(scorer, data, split, k, r, catalog, excluded, n_candidates, exposure_negatives, click_keys,
                shown_keys, key, rng):
    """(owner, item, recall score, recall rank, sampled) rows of one chunk of one scenario's requests."""
    s = _scores_of(scorer, data, split, k, r).clone()
    local = np.full(len(data.evals[split].queries["user"]), -1, np.int64)
    local[r] = np.arange(len(r))
    e = excluded[local[excluded[:, 0]] >= 0] if len(excluded) else excluded
    s[local[e[:, 0]], e[:, 1]] = float("-inf")
    order = torch.argsort(s, dim=1, descending=True).numpy()
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(order.shape[1])[None, :].repeat(len(r), 0), 1)
    valid = torch.isfinite(s).numpy()
    is_cand = (rank < min(n_candidates, s.shape[1])) & valid
    sampled = np.zeros_like(is_cand)
    if exposure_negatives is None:
        take = is_cand
    else:
        cat_keys = key(np.repeat(r, len(catalog)), np.tile(catalog, len(r))).reshape(len(r), -1)
        clicked = np.isin(cat_keys, click_keys)
        pool = is_cand & ~clicked
        m = min(exposure_negatives, pool.shape[1])
        if m:
            noise = np.where(pool, rng.random(pool.shape), np.inf)
            np.put_along_axis(sampled, np.argpartition(noise, m - 1, axis=1)[:, :m], True, 1)
            sampled &= pool
        take = ((np.isin(cat_keys, shown_keys) | clicked) & valid) | (is_cand & clicked) | sampled
    qi, ci = np.nonzero(take)
    return r[qi], catalog[ci], s.numpy()[qi, ci], rank[qi, ci], sampled[qi, ci]
