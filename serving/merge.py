"""The merge step: one scenario's branch candidate lists -> one candidate list for ranking.

* ``quota`` (default): a weighted interleave.  A branch of weight w puts its rank-r item at position
  (r + 1) / w, so at every cut-off n the list holds about w x n items of each branch (less what
  another branch placed first): per-branch quotas that hold for the top 50 as for the top 500.
* ``rrf``: weighted reciprocal-rank fusion, sum over the branches of w / (rrf_k + r + 1).

An item found by several branches is listed once, with the branch (and reason) that ranked it
best.  The result is the hand-off to a ranking stage: items with their merged score, branch and
reason, best first.
"""
from __future__ import annotations

from dataclasses import dataclass

from serving.recall import Candidates


@dataclass
class MergedCandidates:
    """The ranking stage's input: one entry per item, best first."""

    items: list[int]
    scores: list[float]  # merged score: higher is better (quota: minus the interleave position)
    branches: list[str]  # the branch that ranked the item best
    reasons: list[str]
    branch_scores: list[float]  # the item's score in that branch (inner product, decayed count...)


def merge(lists: list[Candidates], strategy: str, weights: dict[str, float], n: int,
          rrf_k: float = 60.0) -> MergedCandidates:
    """Merge ``lists`` (one per branch; a branch missing from ``weights`` gets weight 0) into at
    most ``n`` items."""
    score: dict[int, float] = {}
    best: dict[int, tuple] = {}  # item -> (how well a branch ranked it, branch, reason, its score there)
    for c in lists:
        w = weights.get(c.source, 0.0)
        if w <= 0 or not c.items:
            continue
        for r, item in enumerate(c.items):
            if strategy == "rrf":
                v = w / (rrf_k + r + 1)
                score[item] = score.get(item, 0.0) + v
            else:
                v = -(r + 1) / w
                score[item] = max(score.get(item, float("-inf")), v)
            if item not in best or v > best[item][0]:
                best[item] = (v, c.source, c.reasons[r] if c.reasons else c.source, c.scores[r])
    order = sorted(score, key=lambda i: (-score[i], i))[:n]
    return MergedCandidates(order, [score[i] for i in order], [best[i][1] for i in order],
                            [best[i][2] for i in order], [best[i][3] for i in order])
