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
from dataclasses import dataclass
from pathlib import Path

from sassflow.settings import Settings
from serving.bundle import BundleError, LoadedBundle, current_bundle_id, load_bundle, rollback_bundle
from serving.content import LiveCatalogue
from serving.feature_reader import FeatureReader
from serving.metrics import ServingMetrics
from serving.recall import AnnRecall, Candidates, PopularRecall

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
    scores: list[float]
    fallback: bool
    model_version: str
    bundle_id: str


class RecommendationService:
    def __init__(self, settings: Settings, feature_reader: FeatureReader, metrics: ServingMetrics | None = None):
        self.settings = settings
        self.features = feature_reader
        self.metrics = metrics or ServingMetrics()
        self.bundle: LoadedBundle | None = None
        self.previous_bundle_id: str | None = None
        self.refused: dict[str, str] = {}  # bundle id -> reason; not retried until republished
        self.sources = (AnnRecall(), PopularRecall())  # asked in order; the last answers everyone
        self.catalogue = LiveCatalogue(settings.scenarios)  # new items, searchable before the next bundle
        self._swap_lock = threading.Lock()
        configure_threads(settings)

    # ------------------------------------------------------------ requests

    def recommend_many(self, requests: list[tuple[int, str, int]]) -> list[Recommendation]:
        """Answer ``(user_id, scenario, k)`` requests: one feature read, then per scenario the recall
        sources in order (the ANN branch, the popular fallback for whoever it could not place)."""
        bundle = self.bundle  # this request's bundle, whatever swaps happen meanwhile
        if bundle is None:
            raise NotReady("no bundle loaded yet")
        start = time.perf_counter()
        rows = self.features.read([(u, s) for u, s, _ in requests])
        out: list[Recommendation | None] = [None] * len(requests)
        by_scenario: dict[str, list[int]] = {}
        for i, (_, s, _) in enumerate(requests):
            by_scenario.setdefault(s, []).append(i)
        for scenario, idx in by_scenario.items():
            found: list[Candidates | None] = [None] * len(idx)
            for source in self.sources:
                missing = [j for j, c in enumerate(found) if c is None]
                if not missing:
                    break
                answers = source.retrieve(bundle, scenario, [rows[idx[j]] for j in missing],
                                          [requests[idx[j]][2] for j in missing])
                for j, c in zip(missing, answers):
                    found[j] = c
            for j, i in enumerate(idx):
                user_id, _, _ = requests[i]
                c = found[j]
                out[i] = Recommendation(user_id, scenario, c.items, c.scores, c.source == PopularRecall.name,
                                        str(bundle.model_version), bundle.bundle_id)
        self.metrics.observe(out, time.perf_counter() - start)
        return out

    def recommend(self, user_id: int, scenario: str, k: int) -> Recommendation:
        return self.recommend_many([(user_id, scenario, k)])[0]

    # ------------------------------------------------------------ bundles

    def bundle_path(self, bundle_id: str) -> Path:
        return Path(self.settings.serving.bundle_dir) / bundle_id

    def swap_to(self, bundle_id: str) -> dict:
        """Load, validate and warm ``bundle_id``, then make it the served bundle.

        Refused bundles leave the current one serving and are remembered so the
        watcher does not retry them every tick."""
        with self._swap_lock:
            old = self.bundle
            if old is not None and old.bundle_id == bundle_id:
                return {"status": "unchanged", "bundle_id": bundle_id}
            start = time.perf_counter()
            try:
                new = load_bundle(self.bundle_path(bundle_id), self.settings)
            except BundleError as exc:
                self.refused[bundle_id] = str(exc)
                self.metrics.refused.inc()
                log.error("refused bundle %s, still serving %s: %s", bundle_id, old and old.bundle_id, exc)
                return {"status": "refused", "bundle_id": bundle_id, "reason": str(exc),
                        "serving": old and old.bundle_id}
            try:
                self.catalogue.attach(new)  # items the new bundle lacks stay searchable across the swap
            except Exception as exc:  # a content tower that cannot load must not block the bundle
                log.error("bundle %s: new items not searchable: %s", bundle_id, exc)
            configure_threads(self.settings)  # a training tower may have just imported torch
            load_s = time.perf_counter() - start
            self.bundle = new  # the one atomic step
            self.refused.pop(bundle_id, None)
            if old is not None:
                self.previous_bundle_id = old.bundle_id
                weakref.finalize(old, log.info, "released bundle %s", old.bundle_id)
            del old  # in-flight requests keep it alive until they finish
            self.metrics.swaps.inc()
            self.metrics.swap_seconds.observe(load_s)
            self.metrics.set_bundle(new.bundle_id, new.model_version)
            log.info("serving bundle %s (model %s), loaded in %.2fs", new.bundle_id, new.model_version, load_s)
            return {"status": "swapped", "bundle_id": bundle_id, "load_s": round(load_s, 3),
                    "previous": self.previous_bundle_id}

    def reload(self) -> dict:
        """Swap to whatever ``CURRENT`` points to (admin reload; also the watcher's tick)."""
        target = current_bundle_id(self.settings)
        if target is None:
            return {"status": "no_bundle_published"}
        return self.swap_to(target)

    def check_pointer(self) -> dict | None:
        """The watcher's tick: swap if a bundle we have not refused was published."""
        target = current_bundle_id(self.settings)
        if target is None or target in self.refused or (self.bundle and self.bundle.bundle_id == target):
            return None
        return self.swap_to(target)

    def rollback(self) -> dict:
        """Point ``CURRENT`` at the previous good bundle and serve it."""
        self.metrics.rollbacks.inc()
        return self.swap_to(rollback_bundle(self.settings))
