"""New items in the live service: the catalogue consumer, the per-scenario side index of items the
served bundle lacks, and the content candidate source.

* ``LiveCatalogue`` -- every item seen on the catalogue topic (latest version).  For the served
  bundle it keeps, per scenario, a ``FreshItems`` side index of the items the bundle lacks, each
  encoded by the bundle's content tower (``training.content_model``) into that scenario's SASS item
  space.  A snapshot is built off the request path and installed by one reference assignment on the
  bundle's ``ScenarioCatalog`` (``catalog.fresh``), whose ``search`` merges it with the main index:
  every source that searches a catalogue (the SASS branch included) sees new items, and reads
  never wait.  ``attach`` (called by the service before a new bundle is swapped in) re-derives the
  side indexes for that bundle, so an item the new bundle holds leaves the side index and one it
  still lacks stays.
* ``CatalogueConsumer`` -- a daemon thread reading the items topic with kafka-python from the
  beginning (the topic is compacted: it is the catalogue) and feeding ``LiveCatalogue.add``.
  Malformed records are skipped here; the catalogue stage dead-letters them.
* ``ContentRecall`` -- a candidate source (the shape of ``serving.recall``'s): the mean of the
  scenario vectors of what the user clicked (found in the side index or the main index; new items
  have their content vector there) searched over the catalogue, for the merge step; it answers
  users whose clicks the user tower cannot use (new items) as well as anyone else.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import numpy as np

from sassflow.contracts.artifacts import BundleLayout
from sassflow.contracts.catalog import EventError, ItemEvent, parse_item
from serving.index import item_vectors
from sassflow.contracts.recall import CONTENT
from serving.recall import Candidates, _top_unclicked, clicked_items

log = logging.getLogger("sassflow.serving")


@dataclass(frozen=True)
class FreshItems:
    """One scenario's side index: immutable, replaced whole."""

    item_ids: np.ndarray  # int64 [n]
    vectors: np.ndarray  # float32 [n, d]
    added_at: np.ndarray  # float64 [n] wall clock when each became searchable

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact inner-product top k (the side index stays small: it empties at every new bundle)."""
        scores = np.asarray(queries, np.float32) @ self.vectors.T
        k = min(k, len(self.item_ids))
        top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(scores, top, 1), self.item_ids[top]

    def vectors_of(self, raw_ids) -> np.ndarray:
        hit = np.isin(self.item_ids, np.asarray(list(raw_ids), np.int64))
        return self.vectors[hit]


def _replace(fresh: FreshItems | None, ids: np.ndarray, vectors: np.ndarray) -> FreshItems:
    """``fresh`` with ``ids`` (re)placed by the new vectors."""
    now = np.full(len(ids), time.time())
    if fresh is None or len(fresh.item_ids) == 0:
        return FreshItems(ids, vectors, now)
    keep = ~np.isin(fresh.item_ids, ids)
    return FreshItems(np.r_[fresh.item_ids[keep], ids], np.r_[fresh.vectors[keep], vectors],
                      np.r_[fresh.added_at[keep], now])


class LiveCatalogue:
    def __init__(self, scenarios: list[str]):
        self.scenarios = list(scenarios)
        self.items: dict[int, ItemEvent] = {}
        self.bundle = None
        self.tower = None  # the attached bundle's content tower (None: it has none)
        self._lock = threading.Lock()  # the consumer thread and bundle swaps; never taken by reads

    def attach(self, bundle) -> int:
        """Make ``bundle`` the one new items are added to; returns how many it lacks."""
        from training.content_model import load_content_tower

        tower = load_content_tower(BundleLayout(bundle.path).tower_dir)
        with self._lock:
            self.bundle, self.tower = bundle, tower
            return self._make_searchable(list(self.items.values()))

    def add(self, items: list[ItemEvent]) -> int:
        """New catalogue versions: those the bundle lacks are made searchable (and remembered for
        the next bundle); returns how many."""
        with self._lock:
            for it in items:
                self.items[it.item_id] = it
            return self._make_searchable(items)

    def _make_searchable(self, items: list[ItemEvent]) -> int:
        """Encode the items the attached bundle lacks into its side indexes.  Items it holds
        everywhere they are shown are forgotten: memory grows with the items since the last bundle,
        not with the catalogue (a rollback to an older bundle does not bring them back)."""
        if self.bundle is None or not items:
            return 0
        lacking = self._lacking(items)
        for it in items:
            if not any(it.item_id in ids for ids in lacking.values()):
                self.items.pop(it.item_id, None)
        if self.tower is None:
            return 0
        for scenario, ids in lacking.items():
            chosen = [it for it in items if it.item_id in ids]
            catalog = self.bundle.catalogs[scenario]
            catalog.fresh = _replace(catalog.fresh, np.asarray([it.item_id for it in chosen], np.int64),
                                     self.tower.encode(chosen, scenario))
        return len({i for ids in lacking.values() for i in ids})

    def _lacking(self, items: list[ItemEvent]) -> dict[str, set[int]]:
        """Per scenario of the bundle: the ids among ``items`` shown there that its main index lacks."""
        out = {}
        for scenario, catalog in self.bundle.catalogs.items():
            ids = np.asarray([it.item_id for it in items if scenario in it.shown_in(self.scenarios)], np.int64)
            missing = set(ids[~_in_catalog(catalog, ids)].tolist())
            if missing:
                out[scenario] = missing
        return out


def _in_catalog(catalog, ids: np.ndarray) -> np.ndarray:
    """Per id: is it in the catalogue's main index?"""
    if len(ids) == 0:
        return np.zeros(0, bool)
    return np.isin(ids, catalog.item_ids[catalog.rows_of(ids)])


class CatalogueConsumer:
    """The items topic, from the beginning, into a ``LiveCatalogue`` (a daemon thread)."""

    def __init__(self, settings, live: LiveCatalogue):
        self.s, self.live = settings, live
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="catalogue-consumer", daemon=True)

    def start(self) -> "CatalogueConsumer":
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._consume()
            except Exception as exc:  # a broker outage: log, wait, reconnect (reads never depend on it)
                log.warning("catalogue consumer: %s: %s; retrying in 5s", type(exc).__name__, exc)
                self._stop.wait(5.0)

    def _assign(self, consumer) -> bool:
        from kafka import TopicPartition

        parts = consumer.partitions_for_topic(self.s.kafka.items_topic)
        if not parts:
            return False
        tps = [TopicPartition(self.s.kafka.items_topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        return True

    def _consume(self) -> None:
        from kafka import KafkaConsumer

        consumer = KafkaConsumer(**self.s.kafka.client_kwargs(), group_id=None, enable_auto_commit=False,
                                 fetch_max_wait_ms=self.s.serving.catalog_poll_ms)
        try:
            while not self._assign(consumer):  # the topic appears with the first catalogue producer
                if self._stop.wait(1.0):
                    return
            while not self._stop.is_set():
                batch = consumer.poll(timeout_ms=self.s.serving.catalog_poll_ms)
                items = [it for records in batch.values() for it in self._parse(records)]
                if items:
                    n = self.live.add(items)
                    log.info("catalogue: %d items read, %d made searchable", len(items), n)
        finally:
            consumer.close()

    def _parse(self, records) -> list[ItemEvent]:
        out = []
        for r in records:
            try:
                out.append(parse_item(r.value, self.s.scenarios, self.s.kafka.max_item_bytes))
            except EventError:
                continue  # dead-lettered by the catalogue stage
        return out


class ContentRecall:
    """Users who clicked new items (in the side index, not yet in the bundle), by the vectors of what
    they clicked: content vectors for the new items, the scenario's item vectors for the others (one
    space: the content tower is aligned to it).  Users whose clicks are all in the bundle are the
    SASS branch's: this one leaves them (``None``)."""

    name = CONTENT

    def retrieve(self, bundle, scenario: str, rows: list[dict], ks: list[int]) -> list[Candidates | None]:
        catalog = bundle.catalogs[scenario]
        out: list[Candidates | None] = [None] * len(rows)
        if catalog.fresh is None:
            return out
        for j, row in enumerate(rows):
            clicks = list(row.get("recent_clicks") or []) or list(row.get("recent_clicks_all") or [])
            if not len(catalog.fresh.vectors_of(clicks)):
                continue
            query = self._query(catalog, clicks)
            if query is None:
                continue
            clicked = clicked_items(row)
            scores, ids = catalog.search(query[None, :], ks[j] + len(clicked))
            items, kept = _top_unclicked(ids[0], scores[0], clicked, ks[j])
            out[j] = Candidates(items, kept, self.name, ["like the new items you clicked"] * len(items)) if items else None
        return out

    @staticmethod
    def _query(catalog, clicks: list[int]) -> np.ndarray | None:
        parts = [item_vectors(catalog.index, catalog.rows_of(clicks))]
        fresh = catalog.fresh
        if fresh is not None:
            parts.append(fresh.vectors_of(clicks))
        vecs = np.concatenate(parts)
        if len(vecs) == 0:
            return None
        v = vecs.mean(0)
        norm = float(np.linalg.norm(v))
        return (v / norm).astype(np.float32) if norm > 0 else None
