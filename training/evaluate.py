"""The evaluation protocol of BENCHMARKS.md, the same for every model.

For each (user, scenario) with at least one click in the evaluated split: score every item
seen in that scenario, exclude the items the user had before the split, and compare the top
K with the clicked items. Recall@K = hits / number of clicks; NDCG@K with binary relevance.
Reported per scenario id (as a string) and as the macro mean over scenarios.

A model enters as a scorer ``score(k, queries, catalog) -> Tensor [n_queries, n_catalog]``.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from training.data import TrainingData
from training.trainer import to_torch

Scorer = Callable[[int, dict, np.ndarray], torch.Tensor]
METRICS = ("recall@20", "recall@50", "ndcg@20")
SELECTION_METRIC = "recall@50"  # what early stopping and the quality gate compare (macro mean)


def model_scorer(model) -> Scorer:
    """Inner products of the scenario's user and item vectors (what serving computes)."""
    @torch.no_grad()
    def score(k, queries, catalog):
        model.eval()
        u, _ = model.encode_user(to_torch(queries))
        items = torch.from_numpy(catalog)
        v, _ = model.encode_item(items, torch.full_like(items, k))
        return u @ v.T
    return score


def per_scenario_scorer(models: list) -> Scorer:
    """``dssm_s``: scenario k is scored by its own model."""
    scorers = [model_scorer(m) for m in models]
    return lambda k, queries, catalog: scorers[k](k, queries, catalog)


def popularity_scorer(item_clicks: np.ndarray) -> Scorer:
    """``pop``: the scenario's train click counts, the same ranking for every user."""
    def score(k, queries, catalog):
        c = torch.from_numpy(item_clicks[k, catalog].astype(np.float32))
        return c[None, :].expand(len(queries["user"]), -1)
    return score


def evaluate(score: Scorer, data: TrainingData, split: str = "test", chunk: int = 2048,
             scenarios: list[int] | None = None) -> dict:
    """metric -> scenario id (str) or "mean" -> value (``scenarios``: only these scenario ids)."""
    es = data.evals[split]
    kmax = max(int(m.split("@")[1]) for m in METRICS)
    out: dict[str, dict[str, float]] = {m: {} for m in METRICS}
    discount = 1.0 / np.log2(np.arange(kmax) + 2.0)
    for k in (range(data.n_scenarios) if scenarios is None else scenarios):
        catalog = data.catalogs[k]
        rows = np.flatnonzero(es.queries["scenario"] == k)
        tg, ex = es.targets[k], es.excluded[k]
        sums = {m: 0.0 for m in METRICS}
        n_q = 0
        for lo in range(0, len(rows), chunk):
            r = rows[lo:lo + chunk]
            local = np.full(len(es.queries["scenario"]), -1, np.int64)
            local[r] = np.arange(len(r))
            q = {name: v[r] for name, v in es.queries.items()}
            s = score(k, q, catalog).float().clone()
            e = ex[local[ex[:, 0]] >= 0] if len(ex) else ex
            s[local[e[:, 0]], e[:, 1]] = float("-inf")
            t = tg[local[tg[:, 0]] >= 0] if len(tg) else tg
            truth = np.zeros(s.shape, dtype=bool)
            truth[local[t[:, 0]], t[:, 1]] = True
            n_true = truth.sum(1)
            keep = n_true > 0
            top = torch.topk(s, min(kmax, s.shape[1]), dim=1).indices.numpy()
            hit = np.take_along_axis(truth, top, 1)[keep]
            n_true = n_true[keep]
            n_q += int(keep.sum())
            for m in METRICS:
                K = int(m.split("@")[1])
                h = hit[:, :K]
                if m.startswith("recall"):
                    sums[m] += float((h.sum(1) / n_true).sum())
                else:
                    dcg = (h * discount[:h.shape[1]]).sum(1)
                    idcg = np.cumsum(discount[:K])[np.minimum(n_true, K) - 1]
                    sums[m] += float((dcg / idcg).sum())
        for m in METRICS:
            out[m][str(k)] = sums[m] / n_q if n_q else float("nan")
    for m in METRICS:
        vals = [v for v in out[m].values() if v == v]
        out[m]["mean"] = float(np.mean(vals)) if vals else float("nan")
    return out


def validation_score(model, data: TrainingData, scenarios: list[int] | None = None) -> float:
    """The model's ``SELECTION_METRIC`` on the validation split (macro mean): early stopping's score."""
    return evaluate(model_scorer(model), data, "val", scenarios=scenarios)[SELECTION_METRIC]["mean"]
