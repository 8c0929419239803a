"""Running the recall branches of one scenario's requests and merging them (the request pipeline's
recall step: features -> **branches -> merge** -> ranking -> top k).

The index branches (SASS: tower + ANN search; content: users who clicked new items) run on the
request's thread (CPU); the store-backed branches (i2i, tags, trending: a store read each) run beside
them, one after the other on one thread of a small pool.  A branch that raises,
or that has not answered ``recall.branch_budget_ms`` after the branches started, is skipped and
counted (``sassflow_recall_branch_skipped_total``); the request is answered from the others.  The
SASS branch is not cut off (it runs on the caller's thread and cannot be preempted), only its
failures are skipped (the same for content).  A user no branch can answer gets the bundle's popular items.
"""
from __future__ import annotations

import logging
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path

from sassflow.contracts.recall import BRANCHES, CONTENT, I2I, SASS, TAGS, TRENDING, item_tags_path, read_item_tags
from serving.branch_metrics import BranchMetrics
from serving.heap import freeze_long_lived
from serving.content import ContentRecall
from serving.merge import MergedCandidates, merge
from serving.recall import AnnRecall, Candidates, I2IRecall, PopularRecall, TagRecall, TrendingRecall

log = logging.getLogger("sassflow.serving")
PERSONAL = (SASS, I2I, TAGS, CONTENT)  # a list from one of these is not the cold-start fallback
IN_PROCESS = (SASS, CONTENT)  # CPU-bound index searches on the request's thread (the others read a store)


@dataclass
class Answer(MergedCandidates):
    fallback: bool = False  # no personal branch had anything for this user
    query: object = None  # the SASS branch's user vector (np.ndarray), when it answered


class ItemTags:
    """The item-tag catalog, reloaded when its file changes (checked every few seconds)."""

    def __init__(self, catalog_dir, check_every_s: float = 5.0):
        self.path = item_tags_path(catalog_dir)
        self.catalog_dir, self.every = catalog_dir, check_every_s
        self.tags: dict = {}
        self.mtime: float | None = None
        self.checked = -math.inf

    def __call__(self) -> dict:
        now = time.monotonic()
        if self.mtime is None or now - self.checked >= self.every:  # none yet: look again at every call
            self.checked = now
            mtime = self.path.stat().st_mtime if self.path.exists() else None
            if mtime != self.mtime:
                self.tags, self.mtime = read_item_tags(self.catalog_dir), mtime
                freeze_long_lived()
        return self.tags


class Branches:
    def __init__(self, settings, registry, store=None):
        r = settings.recall
        self.settings = settings
        self.metrics = BranchMetrics(registry)
        if store is None:
            from features.recall_store import open_recall_store

            store = open_recall_store(settings)
        rate = math.log(2) / r.half_life_ms if r.half_life_ms else 0.0
        self.item_tags = ItemTags(Path(r.catalog_dir))
        self.item_tags()  # loaded now, before the service says ready: not by a request (a million items take seconds)
        self.sources = {SASS: AnnRecall(), I2I: I2IRecall(store, r.i2i_triggers, r.i2i_norm, rate),
                        TAGS: TagRecall(store, self.item_tags, r.preferred_tags, r.i2i_triggers),
                        TRENDING: TrendingRecall(store, rate), CONTENT: ContentRecall()}
        self.popular = PopularRecall()
        self.pool = ThreadPoolExecutor(max_workers=min(8, 2 * (os.cpu_count() or 1)), thread_name_prefix="recall")

    def candidates(self, bundle, scenario: str, rows: list[dict], ks: list[int],
                   selected: list[str] | None = None) -> list[Answer]:
        names = [n for n in (selected or self.settings.recall.branches) if n in BRANCHES]
        found = self.run(bundle, scenario, rows, ks, names)
        cfg = self.settings.recall.merge_for(scenario)
        t0 = time.perf_counter()
        out = []
        for j, (row, k) in enumerate(zip(rows, ks)):
            lists = [found[n][j] for n in names if n in found and found[n][j] is not None]
            if not lists:
                lists = self.popular.retrieve(bundle, scenario, [row], [k])
            weights = {c.source: cfg.weights.get(c.source, 0.0) for c in lists}
            if not any(weights.values()):  # only branches the merge does not weigh: count them alike
                weights = dict.fromkeys(weights, 1.0)
            m = merge(lists, cfg.strategy, weights, k, cfg.rrf_k)
            out.append(Answer(m.items, m.scores, m.branches, m.reasons, m.branch_scores,
                              fallback=not any(c.source in PERSONAL for c in lists),
                              query=next((c.query for c in lists if c.query is not None), None)))
        self.metrics.merge_seconds.observe(time.perf_counter() - t0)
        return out

    def run(self, bundle, scenario: str, rows: list[dict], ks: list[int], names: list[str]) -> dict:
        """Each named branch's answers (a list per request) for the branches that answered in time.

        The store branches run one after the other on one pool thread (one thread hop per request,
        not one per branch: a hop costs about as much as a store read), beside the index branches on
        this thread; each store branch that has not finished by the deadline is skipped."""
        deadline = time.perf_counter() + self.settings.recall.branch_budget_ms / 1000
        stream = [n for n in names if n not in IN_PROCESS]
        outcomes: dict[str, tuple[bool, object]] = {}  # branch -> (answered, its answers or the exception)
        future = self.pool.submit(self._run_each, stream, outcomes, bundle, scenario, rows, ks) if stream else None
        found = {}
        for n in (n for n in names if n in IN_PROCESS):
            try:
                found[n] = self._timed(n, bundle, scenario, rows, ks)
            except Exception as exc:  # noqa: BLE001 -- a failing branch is skipped, the request goes on
                self._skip(n, "error", exc)
        if future is not None:
            try:
                future.result(timeout=max(0.0, deadline - time.perf_counter()))
            except FutureTimeout:
                pass
            for n in stream:
                outcome = outcomes.get(n)  # a branch finishing after the deadline is not waited for
                if outcome is None:
                    self._skip(n, "timeout")
                elif outcome[0]:
                    found[n] = outcome[1]
                else:
                    self._skip(n, "error", outcome[1])
        return found

    def _run_each(self, names: list[str], outcomes: dict, bundle, scenario: str, rows: list[dict],
                  ks: list[int]) -> None:
        for n in names:
            try:
                outcomes[n] = (True, self._timed(n, bundle, scenario, rows, ks))
            except Exception as exc:  # noqa: BLE001 -- reported by run() as this branch's error
                outcomes[n] = (False, exc)

    def _timed(self, name: str, bundle, scenario: str, rows: list[dict], ks: list[int]) -> list[Candidates | None]:
        t0 = time.perf_counter()
        try:
            return self.sources[name].retrieve(bundle, scenario, rows, ks)
        finally:
            self.metrics.seconds.labels(name).observe(time.perf_counter() - t0)

    def _skip(self, name: str, reason: str, exc: BaseException | None = None) -> None:
        self.metrics.skipped.labels(name, reason).inc()
        if exc is not None:
            log.error("recall branch %s failed; answering from the others", name, exc_info=exc)



def items_outside_bundle(bundle_path, scenario: str, items: list[int]) -> list[int]:
    """The ``items`` the bundle's catalog of ``scenario`` does not hold: only a streaming branch can
    have found them (the demo's "new item served before the retrain")."""
    import numpy as np

    from sassflow.contracts.artifacts import BundleLayout

    known = np.load(BundleLayout(bundle_path).scenario_dir(scenario) / BundleLayout.ITEM_IDS, allow_pickle=False)
    return [i for i in items if i not in set(known.tolist())]
