"""Item-to-item co-clicks: how often users clicked item j within a few clicks after item i.

A ranker input the recall model lacks: SASS pools the user's recent clicks into one vector (order and
item-to-item transitions are lost), while the next clicks of a user follow their recent ones closely.
The table is built from the recall model's training clicks (never a later event), shipped in the
ranker artifact, and read the same way by the training lists and by serving: a candidate's feature
is the sum of the table's weights from each of the request's recent clicks to it, so it depends on
the request's own sequence and the candidate only.

Weights: w(i, j) = c(i -> j) / sqrt(n_i * n_j) (co-clicks over the geometric mean of the two items'
clicks, so a popular item is not everyone's neighbour), kept for the ``keep`` best j of each i.
Stored as sorted keys ``i * (n_items + 1) + j`` and their weights (vocabulary indices, 0 = unknown).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class CoClicks:
    n_items: int  # vocabulary size (indices 1..n_items; 0 = unknown / padding)
    keys: np.ndarray  # int64 [m], sorted: i * (n_items + 1) + j
    weights: np.ndarray  # float32 [m]

    @classmethod
    def empty(cls, n_items: int) -> "CoClicks":
        return cls(n_items, np.zeros(0, np.int64), np.zeros(0, np.float32))

    def scores(self, recent: np.ndarray, owner: np.ndarray, item: np.ndarray) -> np.ndarray:
        """[n] float64: sum over the request's sequence ``recent[owner[n]]`` (indices, 0 = padding) of
        w(clicked, item[n])."""
        return self.scores_and_head(recent, owner, item, 0)[0]

    def scores_and_head(self, recent: np.ndarray, owner: np.ndarray, item: np.ndarray, head: int,
                        chunk: int = 1 << 18) -> tuple[np.ndarray, np.ndarray]:
        """(``scores``, the same sum over the sequence's first ``head`` clicks only): one lookup for both.

        Looked up from the clicks' side: each request's clicks' rows of the table (at most ``keep``
        each) become one small sorted table of (request, item) sums that the candidates are searched
        in, instead of a search of the whole table for every (candidate, click) pair."""
        out, out_head = np.zeros(len(item), np.float64), np.zeros(len(item), np.float64)
        if not len(self.keys):
            return out, out_head
        for lo in range(0, len(item), chunk):
            keys, every, first = self._request_sums(recent, np.unique(owner[lo:lo + chunk]), head)
            q = owner[lo:lo + chunk].astype(np.int64) * np.int64(self.n_items + 1) + item[lo:lo + chunk]
            left, right = np.searchsorted(keys, q, "left"), np.searchsorted(keys, q, "right")
            out[lo:lo + chunk], out_head[lo:lo + chunk] = every[right] - every[left], first[right] - first[left]
        return out, out_head

    def _request_sums(self, recent: np.ndarray, requests: np.ndarray, head: int):
        """The table rows of ``requests``' clicks: (sorted keys request * span + item, cumulative sums of
        their weights, the same of the first ``head`` clicks' weights), each sum array one longer."""
        span = np.int64(self.n_items + 1)
        seq = recent[requests].astype(np.int64)  # [R, L]
        r, t = np.nonzero(seq > 0)
        src = seq[r, t]
        starts, ends = np.searchsorted(self.keys, src * span), np.searchsorted(self.keys, (src + 1) * span)
        counts = ends - starts
        rows = np.repeat(starts - np.cumsum(counts) + counts, counts) + np.arange(counts.sum())
        keys = np.repeat(requests[r].astype(np.int64), counts) * span + self.keys[rows] % span
        w = self.weights[rows].astype(np.float64)
        order = np.argsort(keys, kind="stable")
        w = w[order]
        first = np.where(np.repeat(t < head, counts)[order], w, 0.0)
        return (keys[order], np.concatenate([[0.0], np.cumsum(w)]), np.concatenate([[0.0], np.cumsum(first)]))


def co_click_table(user: np.ndarray, item: np.ndarray, time: np.ndarray, n_items: int, window: int = 10,
                   keep: int = 100) -> CoClicks:
    """The table of clicks (``user``, ``item`` vocabulary index, ``time``): pairs (i, j) with j among the
    ``window`` clicks after i by the same user."""
    order = np.lexsort((time, user))
    u, it = user[order].astype(np.int64), item[order].astype(np.int64)
    span = np.int64(n_items + 1)
    pairs = [it[:-d] * span + it[d:] for d in range(1, window + 1) if d < len(it)]
    same = [u[:-d] == u[d:] for d in range(1, window + 1) if d < len(it)]
    if not pairs:
        return CoClicks.empty(n_items)
    keys = np.concatenate([p[s] for p, s in zip(pairs, same)])
    keys = keys[(keys // span != keys % span) & (keys // span > 0) & (keys % span > 0)]
    keys, counts = np.unique(keys, return_counts=True)
    n = np.bincount(it, minlength=n_items + 1).astype(np.float64)
    w = counts / np.sqrt(n[keys // span] * n[keys % span])
    # the best ``keep`` per source item: sort by (source, -weight), rank within the source
    src = keys // span
    by = np.lexsort((-w, src))
    rank = np.arange(len(by)) - np.searchsorted(src[by], src[by])
    kept = np.sort(by[rank < keep])
    return CoClicks(n_items, keys[kept], w[kept].astype(np.float32))
