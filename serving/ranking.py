"""The ranking stage of the request pipeline (features -> recall branches -> merge -> **coarse -> fine**
-> top k).

Input, per request: the recall stage's candidate list (``CandidateList``: raw item ids best first and,
per item, the branch that found it).  Each candidate's features are read as of the request
(``training.rankers``: the user's window features from the request's feature row, the candidate's
item window features from the online store through ``ItemFeatureCache``, its recall score, its
branch, its co-click weights from the request's click sequences by the ranker artifact's table), then:

1. the coarse ranker scores every candidate (one forward pass for all of a scenario's requests);
2. the fine ranker scores each request's coarse top ``ranking.coarse_keep`` (the click sequences of
   every request encoded once, all kept candidates in one forward pass);
3. the answer: the fine order, then the remaining candidates in coarse order, cut to k.

The recall score is the SASS inner product of the user's vector and the candidate's item vector for
every candidate, whichever branch found it (what the rankers were trained on); an item the bundle's
index does not hold scores 0 and is told by its branch.  A candidate's score depends on its own
inputs only, never on the other candidates.  Runs under ``torch.inference_mode``; a bundle's rankers
are loaded and smoke-tested with the bundle (``load_rankers``) and swapped with it.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from sassflow.contracts.artifacts import BundleLayout
from sassflow.contracts.features import ITEM_FEATURE_NAMES
from serving.index import item_vectors

USER_SHARE = "scenario_click_share"


class CandidateList(Protocol):
    """The hand-off from recall: ``items`` best first, ``branches`` (one per item) and ``scores`` (each
    item's score in its branch: for the SASS branch the user·item inner product, reused as the
    recall score; for the others it is computed here) and ``query``: the user vector the SASS branch
    searched with, or None (the ranking encodes the user then)."""

    items: list[int]
    branches: list[str]
    scores: list[float]
    query: np.ndarray | None


@dataclass
class RecallCandidates:
    """The merged recall list of one request (``serving.merge.MergedCandidates``' items, the branch
    that found each, and its score in that branch)."""

    items: list[int]
    branches: list[str]
    scores: list[float]
    query: np.ndarray | None = None  # the user vector the SASS branch searched with (None: encode again)


class SimpleCandidates:
    """A candidate list of one branch (a smoke test's ANN candidates)."""

    def __init__(self, items: list[int], branch: str, scores: list[float] | None = None):
        self.items, self.branches = list(items), [branch] * len(items)
        self.scores = list(scores) if scores is not None else [float("nan")] * len(items)
        self.query = None


@dataclass
class Ranked:
    items: list[int]
    scores: list[float]
    branches: list[str]


@dataclass
class BundleRankers:
    """A bundle's rankers, loaded."""

    cfg: object
    coarse: object
    fine: object | None
    items: object  # training.vocab.Vocab over the rankers' item vocabulary
    item_clicks: np.ndarray  # [n_scenarios, n_items + 1] the popularity prior
    coarse_keep: int
    co_clicks: object  # training.co_click.CoClicks, the co-click table


def load_rankers(path: Path, manifest: dict, coarse_keep: int, scenarios: list[str]) -> BundleRankers | None:
    """The rankers of the bundle at ``path`` (None when its manifest leaves them out); raises what
    ``training.rankers.load_rankers`` raises on bad files, and ValueError for rankers trained on other
    scenarios (their scenario embeddings follow the training's scenario order)."""
    entry = manifest.get("ranking")
    if not entry or not entry.get("included"):
        return None
    from training.rankers import load_rankers as load
    from training.vocab import Vocab

    r = load(BundleLayout(path).ranking_dir)
    trained_on = r.meta.get("scenarios", list(scenarios))
    if list(trained_on) != list(scenarios) or r.cfg.n_scenarios != len(scenarios):
        raise ValueError(f"rankers trained on scenarios {trained_on}, this service serves {list(scenarios)}")
    return BundleRankers(r.cfg, r.coarse, r.fine, Vocab(r.item_ids), r.item_clicks, coarse_keep, r.co_clicks)


def nonfinite_ranker_weights(rankers: BundleRankers) -> list[str]:
    import torch

    models = {"coarse": rankers.coarse, "fine": rankers.fine}
    return [f"{m}.{name}" for m, model in models.items() if model is not None
            for name, t in model.state_dict().items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]


class ItemFeatureCache:
    """Item rows (``ITEM_FEATURE_NAMES``) of (item, scenario) keys, read from the feature reader at most
    once per ``ttl_s``: a request's ~500 candidates mostly hit; the misses are one read."""

    def __init__(self, reader, ttl_s: float, max_keys: int = 1_000_000):
        self.read = getattr(reader, "read_items", None)  # a reader without item rows: every feature None
        self.ttl_s, self.max_keys = ttl_s, max_keys
        self._rows: dict[tuple[int, str], tuple[float, dict]] = {}
        self._lock = threading.Lock()

    def get(self, keys: list[tuple[int, str]]) -> list[dict | None]:
        if self.read is None:
            return [None] * len(keys)
        now = time.monotonic()
        rows = self._rows
        stale = list({k for k in keys if (hit := rows.get(k)) is None or now - hit[0] > self.ttl_s})
        if stale:
            fresh = self.read(stale)
            with self._lock:
                if len(rows) + len(stale) > self.max_keys:
                    rows.clear()
                for k, row in zip(stale, fresh):
                    rows[k] = (now, row)
        return [rows[k][1] if k in rows else None for k in keys]


def _user_columns(rows: list[dict], scenario_index: int) -> dict[str, np.ndarray]:
    from training.rankers import USER_COLUMNS

    out = {}
    for name in USER_COLUMNS:
        if name == "user_scenario_share":
            vals = [(r.get(USER_SHARE) or [])[scenario_index] if len(r.get(USER_SHARE) or []) > scenario_index
                    else None for r in rows]
        else:
            vals = [r.get(name.removeprefix("user_")) for r in rows]
        out[name] = np.array([np.nan if v is None else v for v in vals], np.float64)
    return out


def _item_columns(item_rows: list[dict | None], n: int) -> dict[str, np.ndarray]:
    if not any(item_rows):  # no item rows (a reader without them, or items without events)
        return {f"item_{name}": np.full(n, np.nan) for name in ITEM_FEATURE_NAMES}
    out = {}
    for name in ITEM_FEATURE_NAMES:
        out[f"item_{name}"] = np.array([np.nan if r is None or r.get(name) is None else r[name] for r in item_rows],
                                       np.float64)
    return out


class RankingStage:
    def __init__(self, items: ItemFeatureCache, scenarios: list[str], stage_seconds=None):
        self.items, self.scenarios = items, scenarios
        self.stage_seconds = stage_seconds  # histogram labelled by stage, or None

    def _observe(self, stage: str, t0: float) -> float:
        now = time.perf_counter()
        if self.stage_seconds is not None:
            self.stage_seconds.labels(stage).observe(now - t0)
        return now

    def rank(self, bundle, rankers: BundleRankers, scenario: str, rows: list[dict], lists: list[CandidateList],
             ks: list[int]) -> list[Ranked]:
        """Each request's candidates ranked (coarse, then fine over the coarse top), cut to its k."""
        import torch

        from training.rankers import ITEM_PRIOR, RECALL_SCORE, co_click_columns, dense_matrix

        t0 = time.perf_counter()
        cfg = rankers.cfg
        owner = np.repeat(np.arange(len(lists)), [len(c.items) for c in lists])
        raw = np.fromiter((i for c in lists for i in c.items), np.int64, count=len(owner))
        branch_names = [b for c in lists for b in c.branches]
        known = {b: j for j, b in enumerate(cfg.branches)}
        branch = np.array([known.get(b, -1) for b in branch_names], np.int64)
        cols = _item_columns(self.items.get([(int(i), scenario) for i in raw.tolist()]), len(raw))
        t0 = self._observe("item_features", t0)
        s = self.scenarios.index(scenario)
        given = np.fromiter((x for c in lists for x in c.scores), np.float64, count=len(owner))
        cols[RECALL_SCORE] = self._recall_scores(bundle, scenario, rows, lists, owner, raw, given, branch_names)
        item = rankers.items.index(raw)
        cols[ITEM_PRIOR] = rankers.item_clicks[s, item].astype(np.float64)
        seqs = self._sequences(rankers, rows)
        cols.update(co_click_columns(rankers.co_clicks, seqs["recent_clicks"], seqs["recent_clicks_all"], owner, item))
        user_cols = _user_columns(rows, s)
        dense = torch.from_numpy(dense_matrix(cols, branch, cfg.branches, user_cols, owner))
        with torch.inference_mode():
            scen = torch.full((len(owner),), s, dtype=torch.long)
            coarse = rankers.coarse(dense, scen).numpy().astype(np.float64)
            t0 = self._observe("coarse", t0)
            final = coarse - 1e6  # candidates the fine ranker does not see: after, in coarse order
            if rankers.fine is not None and len(owner):
                kept = self._coarse_top(owner, coarse, rankers.coarse_keep)
                final[kept] = self._fine(rankers, seqs, owner, item, kept, s, dense, coarse).astype(np.float64)
                self._observe("fine", t0)
        return [self._answer(lists[j], final[owner == j], ks[j]) for j in range(len(lists))]

    @staticmethod
    def _coarse_top(owner: np.ndarray, coarse: np.ndarray, keep: int) -> np.ndarray:
        order = np.lexsort((-coarse, owner))
        starts = np.searchsorted(owner, np.arange(owner.max() + 2))
        pos = np.arange(len(order)) - starts[owner[order]]
        return np.sort(order[pos < keep])

    @staticmethod
    def _sequences(rankers, rows: list[dict]) -> dict[str, np.ndarray]:
        """The requests' two click sequences as [n_requests, seq_len] vocabulary indices (0: padding)."""
        L = rankers.cfg.seq_len
        seqs = {name: np.zeros((len(rows), L), np.int64) for name in ("recent_clicks", "recent_clicks_all")}
        for name, out in seqs.items():
            for r, row in enumerate(rows):
                seq = [x for x in list(row.get(name) or [])[:L] if x is not None]
                if seq:
                    out[r, :len(seq)] = rankers.items.index(np.asarray(seq, np.int64))
        return seqs

    @staticmethod
    def _fine(rankers, seqs, owner, item, kept, s, dense, coarse) -> np.ndarray:
        import torch

        logits = rankers.fine(torch.from_numpy(seqs["recent_clicks"]), torch.from_numpy(seqs["recent_clicks_all"]),
                              torch.from_numpy(owner[kept]), torch.from_numpy(item[kept]),
                              torch.full((len(kept),), s, dtype=torch.long), dense[torch.from_numpy(kept)],
                              torch.from_numpy(coarse[kept].astype(np.float32)))
        return logits.numpy()

    @staticmethod
    def _recall_scores(bundle, scenario: str, rows: list[dict], lists: list[CandidateList], owner: np.ndarray,
                       raw: np.ndarray, given: np.ndarray, branches: list[str]) -> np.ndarray:
        """The SASS inner product of each candidate with its request's user vector (the one the SASS
        branch searched with, else encoded here): the SASS branch's own score where it found the item,
        else computed (0 for an item outside the index)."""
        from training.rankers import RECALL_BRANCHES

        out = np.where(np.array([b == RECALL_BRANCHES[0] for b in branches], bool) & np.isfinite(given), given, np.nan)
        todo = np.flatnonzero(np.isnan(out))
        if not len(todo):
            return out
        catalog = bundle.catalogs[scenario]
        queries = [c.query for c in lists]
        users = (np.stack(queries) if all(q is not None for q in queries) else bundle.tower.encode(rows, scenario))
        item_rows, inside = catalog.lookup(raw[todo])
        out[todo] = 0.0
        if inside.any():
            vectors = item_vectors(catalog.index, item_rows[inside])
            out[todo[inside]] = np.einsum("nd,nd->n", vectors, users[owner[todo[inside]]])
        return out

    @staticmethod
    def _answer(c: CandidateList, scores: np.ndarray, k: int) -> Ranked:
        order = np.argsort(-scores, kind="stable")[:k]
        return Ranked([c.items[j] for j in order], [float(scores[j]) for j in order], [c.branches[j] for j in order])
