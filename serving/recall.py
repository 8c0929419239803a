"""Candidate sources of the request pipeline (features -> recall branches -> merge -> ranking -> top k).

A source answers the requests of one scenario at once (one tower call, one index search) with, per
request, the candidates it found: raw item ids and their scores, best first, items the user just
clicked left out; ``None`` where it has nothing to say (so the next source is asked).  Each
candidate list carries the name of the source that found it.

* ``AnnRecall`` -- the SASS branch: the user tower's vector for the scenario, searched in the
  scenario's ANN index;
* ``PopularRecall`` -- the scenario's popular items (the cold-start fallback).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Candidates:
    items: list[int]
    scores: list[float]
    source: str


def clicked_items(row: dict) -> set[int]:
    """What the user just clicked, in this scenario or any: never recommended back."""
    return set(row.get("recent_clicks") or ()) | set(row.get("recent_clicks_all") or ())


def _top_unclicked(ids, scores, clicked: set[int], k: int) -> tuple[list[int], list[float]]:
    items, kept = [], []
    for item, score in zip(ids, scores):
        if item >= 0 and item not in clicked:
            items.append(item)
            kept.append(score)
            if len(items) == k:
                break
    return items, kept


class AnnRecall:
    name = "sass"

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
            items, kept = _top_unclicked(ids[n].tolist(), scores[n].tolist(), clicked[j], ks[j])
            out[j] = Candidates(items, kept, self.name) if items else None
        return out


class PopularRecall:
    name = "popular"

    def retrieve(self, bundle, scenario: str, rows: list[dict], ks: list[int]) -> list[Candidates]:
        popular = bundle.catalogs[scenario].popular
        out = []
        for row, k in zip(rows, ks):
            clicked = clicked_items(row)
            items = [i for i in popular[: k + len(clicked)].tolist() if i not in clicked][:k]
            # popularity rank as a score in (0, 1]: comparable within one answer only
            out.append(Candidates(items, [1.0 - r / len(popular) for r in range(len(items))], self.name))
        return out
