"""The champion/challenger gate's evidence: the candidate, the promoted model (the champion) and
popularity, all three scored now on the same validation data.

The champion is re-scored from its artifact (``training.export``), not taken from the number it
recorded when it was trained on another window: its user tower runs on the candidate's validation
queries with every id mapped through the champion's own vocabulary, and items are scored with the
vectors its bundle serves (an item outside its catalog cannot be served by it, so it ranks last).
The queries are "fresh": only validation clicks after the end of the champion's training window
count, when there are any (otherwise the whole validation split, and the evidence says so), so the
champion is not scored on clicks it was trained on.

The decision itself is ``training.registry.champion_challenger_gate``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np
import pandas as pd
import torch

from training.data import VAL, EvalSet, TrainingData, split_by_user_time
from training.evaluate import SELECTION_METRIC, Scorer, evaluate, model_scorer, popularity_scorer
from training.trainer import to_torch

GATE_SPLIT = "gate"  # the evaluation set the gate scores on (added to a copy of the data)
SEQUENCE_INPUTS = ("recent_clicks", "recent_clicks_all")


@dataclass
class GateScores:
    """What the gate compares: ``SELECTION_METRIC`` (macro mean) on the same validation queries."""

    metric: str
    candidate: float
    popularity: float
    champion: float | None = None  # None: nothing promoted yet
    champion_version: int | None = None
    queries: int = 0  # (user, scenario) queries with at least one target click
    fresh_after_ms: int | None = None  # only clicks after this time count (the champion's window end)
    champion_error: str | None = None  # why a promoted model could not be re-scored

    def to_dict(self) -> dict:
        return asdict(self)


def fresh_eval_set(events: pd.DataFrame, data: TrainingData, after_ms: int | None) -> EvalSet:
    """The validation set of ``data`` keeping only the target clicks after ``after_ms`` (``events``:
    the frame ``data`` was prepared from, which gives each click its time)."""
    es = data.evals["val"]
    if after_ms is None:
        return es
    ev = events[events["scenario"].isin(data.scenarios)].reset_index(drop=True)
    split = split_by_user_time(ev)  # the same split ``prepare`` made
    fresh = ((split == VAL) & (ev["event_type"] == "click") & (ev["event_time"] > after_ms)).to_numpy()
    n_items = len(data.items) + 1
    keys = np.unique(data.users.index(ev["user_id"].to_numpy(np.int64)[fresh]) * n_items
                     + data.items.index(ev["item_id"].to_numpy(np.int64)[fresh]))
    targets = []
    for k, tg in enumerate(es.targets):
        pair_keys = es.queries["user"][tg[:, 0]] * n_items + data.catalogs[k][tg[:, 1]]
        targets.append(tg[np.isin(pair_keys, keys)])
    return replace(es, targets=targets)


def count_queries(es: EvalSet) -> int:
    return int(sum(len(np.unique(tg[:, 0])) for tg in es.targets))


def champion_scorer(artifact_dir, data: TrainingData) -> Scorer:
    """The champion as serving would run it, on ``data``'s queries and catalogs (module docstring)."""
    from sassflow.contracts.artifacts import ModelArtifact
    from training.export import load_model, load_vocab
    from training.vocab import Vocab

    model, cfg = load_model(artifact_dir)
    user_ids, item_ids = load_vocab(artifact_dir, cfg)
    users, items = Vocab(user_ids), Vocab(item_ids)
    artifact = ModelArtifact(artifact_dir)
    served = {k: artifact.read_scenario(name) for k, name in enumerate(data.scenarios)}

    def raw(vocab: Vocab, idx: np.ndarray) -> np.ndarray:
        return np.where(idx > 0, vocab.ids[np.maximum(idx, 1) - 1], -1)  # -1: in no vocabulary

    @torch.no_grad()
    def score(k, queries, catalog):
        q = dict(queries)
        q["user"] = users.index(raw(data.users, queries["user"]))
        for name in SEQUENCE_INPUTS:
            q[name] = items.index(raw(data.items, queries[name]))
        u, _ = model.encode_user(to_torch(q))
        catalog_raw = data.items.ids[catalog - 1]
        pos = {int(i): r for r, i in enumerate(served[k].item_ids.tolist())}
        rows = np.array([pos.get(int(i), -1) for i in catalog_raw], np.int64)
        vectors = torch.from_numpy(served[k].vectors)
        s = u @ vectors[np.maximum(rows, 0)].T
        s[:, torch.from_numpy(rows < 0)] = float("-inf")  # not in the champion's catalog: unservable
        return s

    return score


def gate_scores(events: pd.DataFrame, data: TrainingData, candidate_dir, champion=None) -> GateScores:
    """Score the candidate (artifact folder), the champion (a registry version or None) and
    popularity on the same (fresh) validation queries of ``data``."""
    from training.export import load_model

    after = champion.data_end_ms if champion is not None else None
    es = fresh_eval_set(events, data, after)
    if count_queries(es) == 0:  # the champion's window covers the whole validation split
        es, after = data.evals["val"], None
    scored = replace(data, evals={GATE_SPLIT: es})

    def value(scorer: Scorer) -> float:
        return float(evaluate(scorer, scored, GATE_SPLIT)[SELECTION_METRIC]["mean"])

    candidate, _ = load_model(candidate_dir)
    scores = GateScores(metric=f"val {SELECTION_METRIC}", candidate=value(model_scorer(candidate)),
                        popularity=value(popularity_scorer(data.item_clicks)), queries=count_queries(es),
                        fresh_after_ms=after, champion_version=champion.id if champion is not None else None)
    if champion is not None:
        try:
            scores.champion = value(champion_scorer(champion.artifact_path, data))
        except (OSError, ValueError, KeyError, RuntimeError) as exc:  # ArtifactError is a RuntimeError
            scores.champion_error = f"{type(exc).__name__}: {exc}"
    return scores
