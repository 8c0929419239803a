"""The recall branches in `sassflow bench quality` (key ``branches``, BENCHMARKS.md).

The same protocol as the models (``training.evaluate``): per (user, scenario) with test clicks, the
items the user had before the split excluded, recall = hits / test clicks, macro mean over the
scenarios.  Each branch is the product's code: the structures are ``streaming.recall_structures``
over the events, read by ``serving.recall``'s sources from an in-memory store, merged by
``serving.merge``.

Leakage: the structures see the **train split's clicks only**, as SASS's weights and ``pop`` do;
the triggers (a user's recent clicks) are the evaluated split's query features, the ones SASS's
user tower reads (train + validation clicks for the test split).  The merge weights are chosen on
the validation split (with the validation queries) and only then applied to the test split.
"""
from __future__ import annotations

import sys
import time

import numpy as np

from features.recall_store import MemoryRecallStore
from sassflow.contracts.recall import I2I, SASS, TAGS, TRENDING
from serving.merge import merge
from serving.recall import I2IRecall, TagRecall, TrendingRecall
from streaming.recall_structures import DAY_MS, RecallParams, batch_recall
from streaming.replay import frame_to_evs
from training.data import TRAIN, split_by_user_time

CUTOFFS = (50, 200, 500)
DEPTH = max(CUTOFFS)
STRUCTURE_BRANCHES = (I2I, TAGS, TRENDING)
# Merge configurations tried on the validation split: (strategy, weights of sass, i2i, tags, trending,
# rrf_k).  A smaller rrf_k makes the fusion trust each branch's head more; the RRF rows around the
# chosen weighting vary the minor branches' weights finely because rank fusion of these branches is
# flat near its optimum (score fusion of min-max normalised scores did no better, README).
GRID = [("quota", (0.7, 0.2, 0.05, 0.05), 60.0), ("quota", (0.6, 0.25, 0.05, 0.1), 60.0),
        ("quota", (0.55, 0.25, 0.1, 0.1), 60.0), ("quota", (0.5, 0.3, 0.1, 0.1), 60.0),
        ("quota", (0.6, 0.3, 0.05, 0.05), 60.0), ("quota", (0.45, 0.35, 0.1, 0.1), 60.0),
        ("rrf", (1.0, 1.0, 1.0, 1.0), 60.0), ("rrf", (2.0, 1.0, 0.5, 0.5), 60.0), ("rrf", (3.0, 1.0, 0.5, 0.5), 60.0),
        ("rrf", (2.0, 1.5, 0.5, 0.5), 60.0), ("rrf", (2.0, 1.0, 1.0, 0.5), 60.0), ("rrf", (2.0, 1.0, 0.5, 1.0), 60.0),
        ("rrf", (2.0, 1.0, 0.25, 0.25), 60.0), ("rrf", (2.0, 1.0, 0.25, 0.25), 20.0),
        ("rrf", (2.0, 1.0, 0.1, 0.25), 20.0), ("rrf", (2.0, 1.0, 0.25, 0.1), 20.0), ("rrf", (2.0, 1.0, 0.1, 0.1), 20.0),
        ("rrf", (1.5, 1.0, 0.1, 0.1), 20.0), ("rrf", (3.0, 1.0, 0.25, 0.25), 20.0), ("rrf", (2.0, 1.0, 0.1, 0.5), 60.0)]
BRANCH_ORDER = (SASS, I2I, TAGS, TRENDING)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def dataset_params(settings) -> RecallParams:
    """The structures' parameters for a dataset replayed as a whole: MovieLens spans years, so day
    tiles, no horizon, and a pair gap and half-life on that time scale (settings keep the rest)."""
    r = settings.recall
    return RecallParams(pair_window=r.pair_window, pair_max_gap_ms=30 * DAY_MS, tile_ms=DAY_MS,
                        horizon_ms=100 * 365 * DAY_MS, half_life_ms=0, lateness_ms=0, neighbours=200,
                        tag_items=DEPTH * 2, trending_items=DEPTH * 4)


class Split:
    """One evaluation split's queries as serving rows, their exclusions and targets (raw ids)."""

    def __init__(self, data, name: str):
        es = data.evals[name]
        ids = data.items.ids
        q = es.queries
        self.name, self.es = name, es

        def raw(seq):
            return [int(ids[i - 1]) for i in seq if i > 0]

        self.rows = [{"user_id": int(data.users.ids[u - 1]) if u > 0 else None, "recent_clicks": raw(rc),
                      "recent_clicks_all": raw(ra)}
                     for u, rc, ra in zip(q["user"], q["recent_clicks"], q["recent_clicks_all"])]
        self.by_scenario = {k: np.flatnonzero(q["scenario"] == k) for k in range(data.n_scenarios)}
        self.excluded = [set() for _ in self.rows]
        self.targets = [set() for _ in self.rows]
        for k in range(data.n_scenarios):
            cat = data.catalogs[k]
            for r, c in es.excluded[k]:
                self.excluded[r].add(int(ids[cat[c] - 1]))
            for r, c in es.targets[k]:
                self.targets[r].add(int(ids[cat[c] - 1]))


def structure_lists(split: Split, scenarios: list[str], sources: dict) -> dict[str, list]:
    """Per branch, per query: the branch's top ``DEPTH`` raw ids, excluded items left out."""
    out = {name: [None] * len(split.rows) for name in sources}
    for k, rows in split.by_scenario.items():
        for lo in range(0, len(rows), 512):
            chunk = rows[lo:lo + 512]
            qrows = [split.rows[r] for r in chunk]
            ks = [DEPTH + len(split.excluded[r]) for r in chunk]
            for name, source in sources.items():
                for r, c in zip(chunk, source.retrieve(None, scenarios[k], qrows, ks)):
                    items = [] if c is None else c.items
                    out[name][r] = [i for i in items if i not in split.excluded[r]][:DEPTH]
    return out


def sass_lists(split: Split, data, scorer) -> list:
    """The SASS model's exact top ``DEPTH`` over the scenario's catalog (what the ANN branch
    approximates), excluded items left out."""
    import torch

    out = [None] * len(split.rows)
    ids = data.items.ids
    for k, rows in split.by_scenario.items():
        cat = data.catalogs[k]
        ex = split.es.excluded[k]
        for lo in range(0, len(rows), 1024):
            chunk = rows[lo:lo + 1024]
            local = np.full(len(split.rows), -1, np.int64)
            local[chunk] = np.arange(len(chunk))
            s = scorer(k, {n: v[chunk] for n, v in split.es.queries.items()}, cat).float().clone()
            e = ex[local[ex[:, 0]] >= 0] if len(ex) else ex
            s[local[e[:, 0]], e[:, 1]] = float("-inf")
            top = torch.topk(s, min(DEPTH, s.shape[1]), dim=1)
            for n, r in enumerate(chunk):
                keep = torch.isfinite(top.values[n]).numpy()
                out[r] = [int(ids[cat[c] - 1]) for c in top.indices[n].numpy()[keep]]
    return out


def merged_lists(lists: dict[str, list], strategy: str, weights: dict[str, float], rrf_k: float = 60.0) -> list:
    from serving.recall import Candidates

    out = []
    for r in range(len(next(iter(lists.values())))):
        cands = [Candidates(lists[b][r], [0.0] * len(lists[b][r]), b) for b in lists if lists[b][r]]
        out.append(merge(cands, strategy, weights, DEPTH, rrf_k).items)
    return out


def recall_table(split: Split, ranked: list, n_scenarios: int) -> dict[str, dict[str, float]]:
    """recall@K -> scenario id (str) / "mean" -> value."""
    out = {f"recall@{K}": {} for K in CUTOFFS}
    for K in CUTOFFS:
        for k, rows in split.by_scenario.items():
            vals = [len(set(ranked[r][:K]) & split.targets[r]) / len(split.targets[r]) for r in rows
                    if split.targets[r]]
            out[f"recall@{K}"][str(k)] = float(np.mean(vals)) if vals else float("nan")
        vals = [v for v in out[f"recall@{K}"].values() if v == v]
        out[f"recall@{K}"]["mean"] = float(np.mean(vals))
    return out


def unique_hit_share(split: Split, lists: dict[str, list], merged: list, cutoff: int) -> dict[str, dict[str, float]]:
    """Per branch: the test clicks in the merged top ``cutoff`` that this branch's top ``cutoff``
    found and no other branch's did, over all test clicks in the merged top ``cutoff``."""
    out = {b: {} for b in lists}
    for k, rows in split.by_scenario.items():
        unique = dict.fromkeys(lists, 0)
        total = 0
        for r in rows:
            hits = set(merged[r][:cutoff]) & split.targets[r]
            total += len(hits)
            found = {b: set((lists[b][r] or ())[:cutoff]) & hits for b in lists}
            for b in lists:
                unique[b] += len(found[b] - set().union(*(found[o] for o in lists if o != b)))
        for b in lists:
            out[b][str(k)] = unique[b] / total if total else float("nan")
    for b in lists:
        vals = [v for v in out[b].values() if v == v]
        out[b]["mean"] = float(np.mean(vals))
    return out


def _score(table: dict) -> float:
    return float(np.mean([table[f"recall@{K}"]["mean"] for K in CUTOFFS]))


def train_structures(data, events, item_tags: dict, params: RecallParams):
    """The structures of the train split's clicks (the split of ``training.data.prepare``, recomputed
    on the same frame): (rows, those clicks)."""
    ev = events[events["scenario"].isin(data.scenarios)].reset_index(drop=True)  # exactly prepare()'s frame
    split = split_by_user_time(ev)
    train_clicks = ev[(split == TRAIN) & (ev["event_type"] == "click").to_numpy()]
    rows = batch_recall(frame_to_evs(train_clicks.sort_values(["event_time", "event_id"])), params, item_tags)
    return rows, train_clicks


def branch_quality(settings, data, events, item_tags: dict, sass_scorers: list) -> dict:
    """The ``branches`` key of `bench quality`: per-branch and merged recall@50/200/500 on the test
    split (SASS averaged over its seeds' models), unique-hit shares, and the merge chosen on validation."""
    t0 = time.perf_counter()
    params = dataset_params(settings)
    rows, train_clicks = train_structures(data, events, item_tags, params)
    _log(f"branches: structures from {len(train_clicks)} train clicks: {len(rows)} rows "
         f"({time.perf_counter() - t0:.0f}s)")
    store = MemoryRecallStore(rows)
    now = float(train_clicks["event_time"].max()) / 1000
    r = settings.recall
    sources = {I2I: I2IRecall(store, r.i2i_triggers, r.i2i_norm, params.rate_per_ms, clock=lambda: now),
               TAGS: TagRecall(store, lambda: item_tags, r.preferred_tags, r.i2i_triggers),
               TRENDING: TrendingRecall(store, params.rate_per_ms, clock=lambda: now)}
    splits = {name: Split(data, name) for name in ("val", "test")}
    structure = {name: structure_lists(s, data.scenarios, sources) for name, s in splits.items()}
    _log(f"branches: structure branches listed ({time.perf_counter() - t0:.0f}s)")

    val = {SASS: sass_lists(splits["val"], data, sass_scorers[0]), **structure["val"]}
    tried = []
    for strategy, w, rrf_k in GRID:
        weights = dict(zip(BRANCH_ORDER, w))
        merged = merged_lists(val, strategy, weights, rrf_k)
        tried.append((_score(recall_table(splits["val"], merged, data.n_scenarios)), strategy, weights, rrf_k))
    best_val, strategy, weights, rrf_k = max(tried, key=lambda t: t[0])
    _log(f"branches: merge chosen on validation: {strategy} {weights} rrf_k {rrf_k} (mean recall {best_val:.4f})")

    test = splits["test"]
    per_seed = []
    for scorer in sass_scorers:
        lists = {SASS: sass_lists(test, data, scorer), **structure["test"]}
        merged = merged_lists(lists, strategy, weights, rrf_k)
        tables = {b: recall_table(test, lists[b], data.n_scenarios) for b in lists}
        tables["merged"] = recall_table(test, merged, data.n_scenarios)
        for K in CUTOFFS:  # the plain key is at the tightest budget, where the branches differ most
            shares = unique_hit_share(test, lists, merged, K)
            for b in lists:
                tables[b]["unique_hit_share" if K == CUTOFFS[0] else f"unique_hit_share@{K}"] = shares[b]
        per_seed.append(tables)
    out = _average(per_seed)
    out["merge"] = {"strategy": strategy, "weights": weights, "rrf_k": rrf_k, "chosen_on": "val",
                    "tried": [{"strategy": s, "weights": w, "rrf_k": k, "val_mean_recall": v} for v, s, w, k in tried]}
    out["structures"] = {"train_clicks": len(train_clicks), "rows": len(rows), "params": params.__dict__,
                         "seconds": time.perf_counter() - t0}
    out["checks"] = _checks(out, data.n_scenarios)
    return out


def _average(per_seed: list[dict]) -> dict:
    first = per_seed[0]
    return {b: {m: {k: float(np.mean([s[b][m][k] for s in per_seed])) for k in first[b][m]} for m in first[b]}
            for b in first}


def _checks(out: dict, n_scenarios: int) -> dict:
    """The issue's goals, evaluated: merged >= 1.02 x SASS on the mean at each cut-off; merged
    recall@50 >= every single branch in every scenario; every branch with unique hits."""
    branches = [b for b in out if b in BRANCH_ORDER]
    return {
        "merged_vs_sass_ratio": {str(K): out["merged"][f"recall@{K}"]["mean"] / out[SASS][f"recall@{K}"]["mean"]
                                 for K in CUTOFFS},
        "merged_at_50_beats_every_branch_in_every_scenario": all(
            out["merged"]["recall@50"][str(k)] >= max(out[b]["recall@50"][str(k)] for b in branches)
            for k in range(n_scenarios)),
        "every_branch_has_unique_hits": all(out[b]["unique_hit_share"]["mean"] > 0 for b in branches),
    }
