"""The cold-start protocol of ``bench quality``: items held out of training entirely.

1. A share (``frac``, 10 %) of the items, drawn with ``seed``, is *held out*: every event of theirs
   is removed before anything is prepared, so neither SASS, nor the content tower, nor any
   baseline ever sees one of their events (the content tower sees their catalogue content only
   when it encodes them for the test).
2. The other events are prepared as usual (``training.data.prepare``: per-user time split).  A
   user's test period starts at their first warm test event; their clicks on held-out items from
   then on are the cold test clicks (earlier ones are dropped: the items "appear only in the test
   period").
3. For each (user, scenario) with a cold test click: rank the held-out items shown in that
   scenario; recall@K = hits / cold test clicks, per scenario and the macro mean
   (``training.evaluate.evaluate`` on this evaluation set).  The query is the user as of the end
   of their validation period (the same features as the warm test queries).

Scorers: ``content`` (the SASS user vector against the items' content vectors -- what serving
does with a new item), ``content_of_clicks`` (the mean content vector of the user's recent clicks
against them: ``serving.content.ContentRecall``'s query, content to content), ``pop_new`` (the held-out items by how many *other* users clicked them in
the test period: an oracle popularity, the best any popularity signal could do), ``random``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from training.data import NO_TIME, TEST, EvalSet, TrainingData, prepare, split_by_user_time, user_features
from training.evaluate import Scorer, to_torch


@dataclass
class ColdSplit:
    warm: TrainingData  # everything but the held-out items' events
    held_out: np.ndarray  # raw ids of the held-out items
    catalogs: list[np.ndarray]  # per scenario: raw ids of held-out items shown there (the ranked set)
    evals: dict[str, EvalSet]  # {"test": cold test clicks as an EvalSet over ``catalogs``}
    n_cold_clicks: int

    @property
    def n_scenarios(self) -> int:
        return self.warm.n_scenarios


def hold_out_items(events: pd.DataFrame, scenarios: list[str], shown_in: dict[int, list[str]],
                   frac: float = 0.1, seed: int = 0) -> ColdSplit:
    """Hold ``frac`` of the items out (see the module docstring). ``shown_in``: raw item id ->
    the scenarios the catalogue shows it in."""
    ev = events[events["scenario"].isin(scenarios)].reset_index(drop=True)
    items = np.unique(ev["item_id"].to_numpy(np.int64))
    rng = np.random.default_rng(seed)
    held = np.sort(rng.choice(items, size=max(1, int(round(frac * len(items)))), replace=False))
    is_held = ev["item_id"].isin(held).to_numpy()
    warm_ev = ev[~is_held].reset_index(drop=True)
    warm = prepare(warm_ev, scenarios)
    split = split_by_user_time(warm_ev)  # the split prepare used (same input, deterministic)
    test_start = warm_ev.loc[split == TEST].groupby("user_id")["event_time"].min()
    cold = ev[is_held & (ev["event_type"] == "click").to_numpy()]
    start = cold["user_id"].map(test_start)
    cold = cold[start.notna().to_numpy() & (cold["event_time"].to_numpy() >= start.fillna(0).to_numpy())]
    catalogs = [np.asarray([i for i in held.tolist() if name in shown_in.get(i, scenarios)], np.int64)
                for name in scenarios]
    before = split < TEST
    es = _cold_eval_set(warm, warm_ev[before], cold, catalogs, scenarios, test_start)
    return ColdSplit(warm, held, catalogs, {"test": es}, int(len(cold)))


def _cold_eval_set(warm: TrainingData, seen: pd.DataFrame, cold: pd.DataFrame, catalogs, scenarios,
                   test_start: pd.Series) -> EvalSet:
    S = len(scenarios)
    scen_of = {name: k for k, name in enumerate(scenarios)}
    cs = cold["scenario"].map(scen_of).to_numpy(np.int64)
    raw_users = cold["user_id"].to_numpy(np.int64)
    pairs = np.unique(np.stack([raw_users, cs], 1), axis=0)
    q_user = warm.users.index(pairs[:, 0])
    clicks = seen[seen["event_type"] == "click"]
    hu, hi = warm.users.index(clicks["user_id"].to_numpy(np.int64)), warm.items.index(clicks["item_id"].to_numpy(np.int64))
    hs, ht = clicks["scenario"].map(scen_of).to_numpy(np.int64), clicks["event_time"].to_numpy(np.int64)
    # as of each user's first test-period event, as the warm evaluation (``training.data``)
    as_of = pd.Series(pairs[:, 0]).map(test_start).to_numpy(np.int64) + 1
    queries = user_features(hu, hs, hi, ht, q_user, pairs[:, 1], np.full(len(pairs), NO_TIME), S, warm.seq_len,
                            as_of=as_of)
    row_of = {(int(u), int(s)): r for r, (u, s) in enumerate(pairs.tolist())}
    targets = []
    for k in range(S):
        col_of = {int(i): c for c, i in enumerate(catalogs[k].tolist())}
        found = {(row_of[(int(u), k)], col_of[int(i)]) for u, s, i in
                 zip(raw_users.tolist(), cs.tolist(), cold["item_id"].tolist()) if s == k and int(i) in col_of}
        targets.append(np.asarray(sorted(found), np.int64).reshape(-1, 2))
    queries["row"] = np.arange(len(pairs))  # lets a scorer find a chunk's queries in the set
    return EvalSet(queries=queries, targets=targets, excluded=[np.zeros((0, 2), np.int64)] * S)


def content_scorer(user_model, item_vectors: list[np.ndarray]) -> Scorer:
    """The SASS user vector against the held-out items' vectors of the scenario (``item_vectors[k]``
    row c = ``ColdSplit.catalogs[k][c]``; ``evaluate`` always passes that whole catalogue)."""
    @torch.no_grad()
    def score(k, queries, catalog):
        user_model.eval()
        u, _ = user_model.encode_user(to_torch(queries))
        return u @ torch.from_numpy(item_vectors[k]).T
    return score


def clicks_content_scorer(split: ColdSplit, content_of: dict[int, np.ndarray], item_vectors: list[np.ndarray]) -> Scorer:
    """Content to content: the mean content vector of the user's recent clicks in the scenario (all
    scenarios when none there) against the held-out items' content vectors (``content_of``: raw id ->
    its content vector in the scenario being scored; ``item_vectors`` as in ``content_scorer``)."""
    ids = split.warm.items.ids

    def score(k, queries, catalog):
        dim = item_vectors[k].shape[1]
        q = np.zeros((len(queries["row"]), dim), np.float32)
        for n, (own, every) in enumerate(zip(queries["recent_clicks"], queries["recent_clicks_all"])):
            seq = own[own > 0] if (own > 0).any() else every[every > 0]
            vecs = [content_of[k][r] for r in ids[seq - 1].tolist() if r in content_of[k]]
            if vecs:
                v = np.mean(vecs, 0)
                q[n] = v / max(float(np.linalg.norm(v)), 1e-12)
        return torch.from_numpy(q @ item_vectors[k].T)
    return score


def pop_new_scorer(split: ColdSplit) -> Scorer:
    """Held-out items by the number of *other* users who clicked them in the test period."""
    es = split.evals["test"]

    def score(k, queries, catalog):
        tg = es.targets[k]
        counts = np.bincount(tg[:, 1], minlength=len(split.catalogs[k])).astype(np.float32)
        s = np.tile(counts, (len(queries["row"]), 1))
        local = np.full(len(es.queries["row"]), -1, np.int64)
        local[queries["row"]] = np.arange(len(queries["row"]))
        own = tg[local[tg[:, 0]] >= 0]
        s[local[own[:, 0]], own[:, 1]] -= 1.0  # the user's own click is no evidence of popularity
        return torch.from_numpy(s)
    return score


def random_scorer(seed: int) -> Scorer:
    gen = torch.Generator().manual_seed(seed)
    return lambda k, queries, catalog: torch.rand((len(queries["scenario"]), len(catalog)), generator=gen)


def warm_recall_with_new_items(split: ColdSplit, model, item_vectors: list[np.ndarray]) -> dict:
    """The warm test protocol with the held-out items' vectors added to every scenario's catalogue,
    as the served index holds them (new items compete with the warm ones for the top K)."""
    from training.content import recall_with_extra_items

    return recall_with_extra_items(model, split.warm, item_vectors, "test")
