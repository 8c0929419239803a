"""The recommendation service: one reference to the bundle being served, and what to do with it.

Requests read ``self.bundle`` once and use that object to the end, so a swap
(which only replaces the reference) never changes a request half-way; the old
bundle is freed by reference counting when its last request finishes.  Loading,
validating and warming a new bundle happens on the caller's thread (the
watcher, an admin request in the thread pool), never on the request path, and
swaps are serialised by a lock.
"""
from __future__ import annotations

import logging
import os
import sys
import threading
import time
import weakref
from dataclasses import dataclass, field

from sassflow.settings import Settings
from serving.bundle import BundleError, LoadedBundle, bundle_path, load_bundle, read_pointer, rollback_bundle
from serving.content import LiveCatalogue
from serving.feature_reader import FeatureReader
from serving.heap import freeze_long_lived
from serving.metrics import ServingMetrics
from serving.branches import Branches
from serving.ranking import ItemFeatureCache, RankingStage, RecallCandidates

log = logging.getLogger("sassflow.serving")


def configure_threads(settings: Settings) -> None:
    """Pin FAISS/OpenMP and torch thread pools to the configured sizes.

    Request concurrency comes from serving many requests, not from parallelising
    one search; oversubscribed OpenMP pools on 2 cores wreck tail latency.  The
    environment variable only helps before the first import, so callers that
    start processes set ``OMP_NUM_THREADS`` in the child's environment too."""
    import faiss

    os.environ.setdefault("OMP_NUM_THREADS", str(settings.serving.omp_threads))
    faiss.omp_set_num_threads(settings.serving.omp_threads)
    if "torch" in sys.modules:  # only a training tower brings torch in; do not import it for nothing
        torch = sys.modules["torch"]
        if torch.get_num_threads() != settings.serving.torch_threads:
            torch.set_num_threads(settings.serving.torch_threads)


class NotReady(Exception):
    """No bundle is loaded yet."""


@dataclass
class Recommendation:
    user_id: int
    scenario: str
    items: list[int]
    scores: list[float]  # each item's score in the branch that found it
    fallback: bool
    model_version: str
    bundle_id: str
    branches: list[str] = field(default_factory=list)  # per item: the branch that found it
    reasons: list[str] = field(default_factory=list)  # per item: why, e.g. "because you clicked 1193"
    ranked: bool = False  # ordered by the bundle's rankers (else: the recall order)


class RecommendationService:
    def __init__(self, settings: Settings, feature_reader: FeatureReader, metrics: ServingMetrics | None = None,
                 recall_store=None):
        self.settings = settings
        self.features = feature_reader
        self.metrics = metrics or ServingMetrics()
        self.bundle: LoadedBundle | None = None
        self.previous_bundle_id: str | None = None
        self.refused: dict[str, str] = {}  # bundle id -> reason; not retried until republished
        self.pointer_problem: str | None = None  # why CURRENT names no bundle, when it does not
        self.branches = Branches(settings, self.metrics.registry, recall_store)
        self.catalogue = LiveCatalogue(settings.scenarios)  # new items, searchable before the next bundle
        self.ranking = RankingStage(ItemFeatureCache(feature_reader, settings.ranking.item_cache_s), settings.scenarios,
                                    self.metrics.stage_seconds)
        self._swap_lock = threading.Lock()
        configure_threads(settings)

    # ------------------------------------------------------------ requests

    def recommend_many(self, requests: list[tuple[int, str, int]], branches: list[str] | None = None,
                       ranking: list[bool] | None = None) -> list[Recommendation]:
        """Answer ``(user_id, scenario, k)`` requests -- the request pipeline: one feature read; per
        scenario the recall branches (``branches``, default settings.recall.branches) merged
        (``serving.branches``); where ``ranking`` (per request, default on) and the bundle has rankers,
        the merged ``ranking.candidates`` go through the coarse and fine rankers; the top k.  Users no
        branch can answer get the bundle's popular items (never ranked)."""
        bundle = self.bundle  # this request's bundle, whatever swaps happen meanwhile
        if bundle is None:
            raise NotReady("no bundle loaded yet")
        start = time.perf_counter()
        rows = self.features.read([(u, s) for u, s, _ in requests])
        self.metrics.stage_seconds.labels("features").observe(time.perf_counter() - start)
        ranked = [bundle.rankers is not None and (ranking is None or ranking[i]) for i in range(len(requests))]
        depth = self.settings.ranking.candidates
        out: list[Recommendation | None] = [None] * len(requests)
        by_scenario: dict[str, list[int]] = {}
        for i, (_, s, _) in enumerate(requests):
            by_scenario.setdefault(s, []).append(i)
        for scenario, idx in by_scenario.items():
            t0 = time.perf_counter()
            ks = [max(requests[i][2], depth) if ranked[i] else requests[i][2] for i in idx]
            merged = self.branches.candidates(bundle, scenario, [rows[i] for i in idx], ks, branches)
            self.metrics.stage_seconds.labels("recall").observe(time.perf_counter() - t0)
            personal = [j for j, i in enumerate(idx) if ranked[i] and not merged[j].fallback]
            answers = dict(zip(personal, self._rank(bundle, scenario, [rows[idx[j]] for j in personal],
                                                    [merged[j] for j in personal], [requests[idx[j]][2] for j in personal])))
            for j, i in enumerate(idx):
                out[i] = self._answer(requests[i], scenario, bundle, merged[j], answers.get(j))
        self.metrics.observe(out, time.perf_counter() - start)
        return out

    @staticmethod
    def _answer(request, scenario: str, bundle, m, ranked) -> Recommendation:
        """The top k: the rankers' order when they ranked this request, else the merged recall order."""
        user_id, _, k = request
        version = str(bundle.model_version)
        if ranked is None:
            return Recommendation(user_id, scenario, m.items[:k], m.branch_scores[:k], m.fallback, version,
                                  bundle.bundle_id, m.branches[:k], m.reasons[:k], False)
        reason = dict(zip(m.items, m.reasons))
        return Recommendation(user_id, scenario, ranked.items, ranked.scores, m.fallback, version, bundle.bundle_id,
                              ranked.branches, [reason[i] for i in ranked.items], True)

    def _rank(self, bundle, scenario: str, rows: list[dict], merged: list, ks: list[int]) -> list:
        """The ranked answers of the merged candidates (the hand-off: item, branch, branch score)."""
        if not rows:
            return []
        lists = [RecallCandidates(m.items, m.branches, m.branch_scores, m.query) for m in merged]
        return self.ranking.rank(bundle, bundle.rankers, scenario, rows, lists, ks)

    def recommend(self, user_id: int, scenario: str, k: int, branches: list[str] | None = None,
                  ranking: bool = True) -> Recommendation:
        return self.recommend_many([(user_id, scenario, k)], branches, [ranking])[0]

    # ------------------------------------------------------------ bundles

    def _refuse(self, bundle_id: str, reason: str) -> None:
        """The one refusal path: remembered (not retried until asked), counted, logged once."""
        self.refused[bundle_id] = reason
        self.metrics.refused.inc()
        log.error("refused bundle %s, still serving %s: %s", bundle_id, self.bundle and self.bundle.bundle_id, reason)

    def _load(self, bundle_id: str) -> LoadedBundle:
        """Load and validate ``bundle_id``; a bundle that fails is refused and ``BundleError`` raised."""
        try:
            return load_bundle(bundle_path(self.settings, bundle_id), self.settings)
        except BundleError as exc:
            reason = str(exc)
        except Exception as exc:  # a check that broke is still a refusal, never a crash loop
            log.exception("unexpected error while loading bundle %s", bundle_id)
            reason = f"bundle {bundle_id}: unexpected {type(exc).__name__} while loading"
        self._refuse(bundle_id, reason)
        raise BundleError(reason)

    def _install(self, new: LoadedBundle, load_s: float) -> dict:
        """Make ``new`` the served bundle (call with the swap lock held)."""
        try:
            self.catalogue.attach(new)  # items the new bundle lacks stay searchable across the swap
        except Exception as exc:  # a content tower that cannot load must not block the bundle
            log.error("bundle %s: new items not searchable: %s", new.bundle_id, exc)
        configure_threads(self.settings)  # a training tower may have just imported torch
        old = self.bundle
        self.bundle = new  # the one atomic step
        self.refused.pop(new.bundle_id, None)
        if old is not None:
            self.previous_bundle_id = old.bundle_id
            weakref.finalize(old, log.info, "released bundle %s", old.bundle_id)
        del old  # in-flight requests keep it alive until they finish
        self.metrics.swaps.inc()
        self.metrics.swap_seconds.observe(load_s)
        self.metrics.set_bundle(new.bundle_id, new.model_version)
        freeze_long_lived()
        log.info("serving bundle %s (model %s), loaded in %.2fs", new.bundle_id, new.model_version, load_s)
        return {"status": "swapped", "bundle_id": new.bundle_id, "load_s": round(load_s, 3),
                "previous": self.previous_bundle_id}

    def swap_to(self, bundle_id: str) -> dict:
        """Load, validate and warm ``bundle_id``, then make it the served bundle.

        Refused bundles leave the current one serving and are remembered so the
        watcher does not retry them every tick."""
        with self._swap_lock:
            if self.bundle is not None and self.bundle.bundle_id == bundle_id:
                return {"status": "unchanged", "bundle_id": bundle_id}
            start = time.perf_counter()
            try:
                new = self._load(bundle_id)
            except BundleError as exc:
                return {"status": "refused", "bundle_id": bundle_id, "reason": str(exc),
                        "serving": self.bundle and self.bundle.bundle_id}
            return self._install(new, time.perf_counter() - start)

    def _note_pointer(self, problem: str | None) -> None:
        """A ``CURRENT`` that names no bundle is refused like a bad bundle: counted and logged once."""
        if problem and problem != self.pointer_problem:
            self.metrics.refused.inc()
            log.error("refused the bundle pointer, still serving %s: %s", self.bundle and self.bundle.bundle_id, problem)
        self.pointer_problem = problem

    def reload(self) -> dict:
        """Swap to whatever ``CURRENT`` points to, even a bundle refused before (admin reload)."""
        pointer = read_pointer(self.settings)
        self._note_pointer(pointer.problem)
        if pointer.problem:
            return {"status": "refused", "reason": pointer.problem}
        if pointer.bundle_id is None:
            return {"status": "no_bundle_published"}
        return self.swap_to(pointer.bundle_id)

    def check_pointer(self) -> dict | None:
        """The watcher's tick: swap if a bundle we have not refused was published."""
        pointer = read_pointer(self.settings)
        self._note_pointer(pointer.problem)
        target = pointer.bundle_id
        if target is None or target in self.refused or (self.bundle and self.bundle.bundle_id == target):
            return None
        return self.swap_to(target)

    def rollback(self) -> dict:
        """The shared rollback (``serving.bundle.rollback_bundle``: ``CURRENT`` moves back to the
        newest earlier bundle that validates), then serve that bundle here at once.  Raises
        ``BundleError`` when there is none."""
        self.metrics.rollbacks.inc()
        with self._swap_lock:
            start = time.perf_counter()
            serving = self.bundle

            def load(bundle_id: str) -> LoadedBundle:
                return serving if serving is not None and serving.bundle_id == bundle_id else self._load(bundle_id)

            new = rollback_bundle(self.settings, load)
            if new is serving:
                return {"status": "unchanged", "bundle_id": new.bundle_id}
            return self._install(new, time.perf_counter() - start)
