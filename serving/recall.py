"""Candidate sources of the request pipeline (features -> recall branches -> merge -> ranking -> top k).

A source answers the requests of one scenario at once (one tower call, one index search, one store
read) with, per request, the candidates it found: raw item ids and their scores, best first, items
the user just clicked left out; ``None`` where it has nothing to say.  Each candidate list carries
the name of the source (branch) that found it and, per item, the reason.

* ``AnnRecall`` -- the SASS branch: the user tower's vector for the scenario, searched in the
  scenario's ANN index;
* ``I2IRecall`` -- items co-clicked with the user's newest clicks (the stream's i2i rows);
* ``TagRecall`` -- the live best items of the user's preferred tags (the stream's tag rows);
* ``TrendingRecall`` -- the scenario's live trending items (the stream's trending row);
* ``PopularRecall`` -- the bundle's popular items (the last resort when nothing else answers).

Stored scores are log-weights (``sassflow.contracts.recall``); the structure sources turn them into
decayed counts as of the request time, so a row read an hour after it was written is decayed by
that hour.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from sassflow.contracts.recall import I2I, POPULAR, SASS, TAGS, TRENDING, i2i_key, tag_key, trending_key


@dataclass
class Candidates:
    items: list[int]
    scores: list[float]
    source: str
    reasons: list[str] = field(default_factory=list)  # per item; empty: the source's name says it
    query: np.ndarray | None = None  # the user vector the SASS branch searched with (ranking reuses it)


def clicked_items(row: dict) -> set[int]:
    """What the user just clicked, in this scenario or any: never recommended back."""
    return set(row.get("recent_clicks") or ()) | set(row.get("recent_clicks_all") or ())


def clicked_mask(ids: np.ndarray, clicked: set[int]) -> np.ndarray:
    """Which of ``ids`` the user clicked.  A user's recent clicks are a few dozen at most: comparing
    all pairs is cheaper than ``np.isin``'s sort on a request's few hundred ids."""
    if not clicked:
        return np.zeros(len(ids), bool)
    return (np.asarray(ids)[:, None] == np.fromiter(clicked, np.int64, count=len(clicked))[None, :]).any(1)


def _top_unclicked(ids: np.ndarray, scores: np.ndarray, clicked: set[int], k: int) -> tuple[list[int], list[float]]:
    """The first ``k`` found ids (-1: a slot the index could not fill) the user has not clicked."""
    kept = np.flatnonzero((ids >= 0) & ~clicked_mask(ids, clicked))[:k]
    return ids[kept].tolist(), scores[kept].tolist()


class AnnRecall:
    name = SASS

    def retrieve(self, bundle, scenario: str, rows: list[dict], ks: list[int]) -> list[Candidates | None]:
        out: list[Candidates | None] = [None] * len(rows)
        personal = [j for j, row in enumerate(rows) if row.get("recent_clicks")]
        if not personal:
            return out
        vectors = bundle.tower.encode([rows[j] for j in personal], scenario)
        # a zero vector (no known click) or a non-finite one is not a query: the next source answers
        placed = [n for n in range(len(personal)) if np.any(vectors[n]) and np.isfinite(vectors[n]).all()]
        if not placed:
            return out
        searched = [personal[n] for n in placed]
        clicked = {j: clicked_items(rows[j]) for j in searched}
        k_search = max(ks[j] for j in searched) + max(len(c) for c in clicked.values())
        scores, ids = bundle.catalogs[scenario].search(vectors[placed], k_search)
        for n, j in enumerate(searched):
            items, kept = _top_unclicked(ids[n], scores[n], clicked[j], ks[j])
            out[j] = (Candidates(items, kept, self.name, ["similar to what you watch"] * len(items), vectors[placed[n]])
                      if items else None)
        return out


class PopularRecall:
    name = POPULAR

    def retrieve(self, bundle, scenario: str, rows: list[dict], ks: list[int]) -> list[Candidates]:
        popular = bundle.catalogs[scenario].popular
        out = []
        for row, k in zip(rows, ks):
            clicked = clicked_items(row)
            items = [i for i in popular[: k + len(clicked)].tolist() if i not in clicked][:k]
            # popularity rank as a score in (0, 1]: comparable within one answer only
            out.append(Candidates(items, [1.0 - r / len(popular) for r in range(len(items))], self.name))
        return out


# --------------------------------------------------------------------------- the stream's structures


def _recency_weights(n: int) -> list[float]:
    """The i-th newest click of a user counts 1 / (1 + i): what they just did says the most."""
    return [1.0 / (1 + i) for i in range(n)]


def _triggers(row: dict, limit: int) -> list[int]:
    """The user's newest distinct clicks, the scenario's first, then any scenario's."""
    out: list[int] = []
    for item in list(row.get("recent_clicks") or ()) + list(row.get("recent_clicks_all") or ()):
        if item is not None and item not in out:
            out.append(item)
            if len(out) == limit:
                break
    return out


def _ranked(scores: dict[int, float], why: dict[int, str], clicked: set[int], k: int, source: str) -> Candidates | None:
    best = sorted(((-v, i) for i, v in scores.items() if i not in clicked))[:k]
    if not best:
        return None
    return Candidates([i for _, i in best], [-v for v, _ in best], source, [why[i] for _, i in best])


class I2IRecall:
    """Sum over the user's newest clicks t (recency-weighted) of co-clicks(t, j) / clicks(t) ** norm."""

    name = I2I

    def __init__(self, store, triggers: int, norm: float, rate_per_ms: float, clock=time.time):
        self.store, self.n_triggers, self.norm, self.rate, self.clock = store, triggers, norm, rate_per_ms, clock

    def retrieve(self, bundle, scenario: str, rows: list[dict], ks: list[int]) -> list[Candidates | None]:
        triggers = [_triggers(row, self.n_triggers) for row in rows]
        keys = sorted({i2i_key(t, scenario) for ts in triggers for t in ts})
        found = dict(zip(keys, self.store.read(keys)))
        offset = (1.0 - self.norm) * self.rate * self.clock() * 1000  # decay to now, see the contract
        out: list[Candidates | None] = []
        for row, ts, k in zip(rows, triggers, ks):
            hits = [(t, w, found[i2i_key(t, scenario)]) for t, w in zip(ts, _recency_weights(len(ts)))]
            hits = [(t, w, r) for t, w, r in hits if r is not None and len(r.items)]
            out.append(self._sum(hits, offset, clicked_items(row), k) if hits else None)
        return out

    def _sum(self, hits: list, offset: float, clicked: set[int], k: int) -> Candidates | None:
        items = np.concatenate([r.items for _, _, r in hits])
        values = np.exp(np.concatenate([r.scores + (math.log(w) - self.norm * r.norm - offset) for _, w, r in hits]))
        trigger = np.concatenate([np.full(len(r.items), t, dtype=np.int64) for t, _, r in hits])
        uniq, inv = np.unique(items, return_inverse=True)
        sums = np.bincount(inv, weights=values)
        first = np.lexsort((-values, inv))  # per item, its largest contribution first
        best_trigger = np.empty(len(uniq), dtype=np.int64)
        best_trigger[inv[first[::-1]]] = trigger[first[::-1]]  # the last write per item is its largest
        if clicked:
            sums[clicked_mask(uniq, clicked)] = -1.0
        order = np.lexsort((uniq, -sums))[:k]
        order = order[sums[order] > 0]
        if not len(order):
            return None
        return Candidates(uniq[order].tolist(), sums[order].tolist(), self.name,
                          [f"because you clicked {t}" for t in best_trigger[order].tolist()])


class TagRecall:
    """The live best items of the user's preferred tags (the tags of their newest clicks, by recency),
    each tag's list scaled to its best item and weighted by the tag's preference."""

    name = TAGS

    def __init__(self, store, item_tags, n_tags: int, history: int):
        self.store, self.item_tags, self.n_tags, self.history = store, item_tags, n_tags, history

    def preferred_tags(self, row: dict) -> list[tuple[str, float]]:
        weight: dict[str, float] = {}
        clicks = _triggers(row, self.history)
        for item, w in zip(clicks, _recency_weights(len(clicks))):
            for tag in self.item_tags().get(item, ()):
                weight[tag] = weight.get(tag, 0.0) + w
        return sorted(weight.items(), key=lambda tw: (-tw[1], tw[0]))[:self.n_tags]

    def retrieve(self, bundle, scenario: str, rows: list[dict], ks: list[int]) -> list[Candidates | None]:
        prefs = [self.preferred_tags(row) for row in rows]
        keys = sorted({tag_key(t, scenario) for p in prefs for t, _ in p})
        found = dict(zip(keys, self.store.read(keys)))
        out: list[Candidates | None] = []
        for row, pref, k in zip(rows, prefs, ks):
            lists = [(tag, w, found[tag_key(tag, scenario)]) for tag, w in pref]
            lists = [(tag, w, r) for tag, w, r in lists if r is not None and len(r.items)]
            out.append(self._best(lists, clicked_items(row), k) if lists else None)
        return out

    def _best(self, lists: list, clicked: set[int], k: int) -> Candidates | None:
        """Each item at its best tag's value: the tag's weight x its decayed clicks / the tag's top's."""
        items = np.concatenate([r.items for _, _, r in lists])
        values = np.concatenate([w * np.exp(r.scores - r.scores[0]) for _, w, r in lists])
        tag = np.concatenate([np.full(len(r.items), n) for n, (_, _, r) in enumerate(lists)])
        order = np.lexsort((-values, items))  # per item, its best tag first
        first = np.ones(len(order), dtype=bool)
        first[1:] = items[order][1:] != items[order][:-1]
        best = order[first]
        if clicked:
            best = best[~clicked_mask(items[best], clicked)]
        best = best[np.lexsort((items[best], -values[best]))][:k]
        if not len(best):
            return None
        return Candidates(items[best].tolist(), values[best].tolist(), self.name,
                          [f"trending in {lists[t][0]}" for t in tag[best].tolist()])


class TrendingRecall:
    """The scenario's live trending items, the same list for every user (minus their clicks); the
    row is read and decayed once per ``cache_s`` per scenario, not per request."""

    name = TRENDING

    def __init__(self, store, rate_per_ms: float, clock=time.time, cache_s: float = 1.0):
        self.store, self.rate, self.clock, self.cache_s = store, rate_per_ms, clock, cache_s
        self._cache: dict[str, tuple[float, np.ndarray, np.ndarray]] = {}

    def _row(self, scenario: str) -> tuple[np.ndarray, np.ndarray]:
        now = self.clock()
        hit = self._cache.get(scenario)
        if hit is None or now - hit[0] >= self.cache_s:
            (r,) = self.store.read([trending_key(scenario)])
            items, scores = ((np.zeros(0, np.int64), np.zeros(0)) if r is None else
                             (np.asarray(r.items, np.int64), np.exp(r.scores - self.rate * now * 1000)))
            hit = self._cache[scenario] = (now, items, scores)
        return hit[1], hit[2]

    def retrieve(self, bundle, scenario: str, rows: list[dict], ks: list[int]) -> list[Candidates | None]:
        items, scores = self._row(scenario)
        reason = f"trending in {scenario}"
        out: list[Candidates | None] = []
        for row, k in zip(rows, ks):
            keep = np.flatnonzero(~clicked_mask(items, clicked_items(row)))[:k]
            out.append(Candidates(items[keep].tolist(), scores[keep].tolist(), self.name,
                                  [reason] * len(keep)) if len(keep) else None)
        return out
