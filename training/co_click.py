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

        Looked up from the clicks' side: the table rows of each request's clicks (at most ``keep`` each)
        are summed per (request, item), and the candidates read those sums, instead of a search of the
        whole table for every (candidate, click) pair."""
        out, out_head = np.zeros(len(item), np.float64), np.zeros(len(item), np.float64)
        if not len(self.keys):
            return out, out_head
        span = np.int64(self.n_items + 1)
        for lo in range(0, len(item), chunk):
            requests = np.unique(owner[lo:lo + chunk])
            local, j, w, first = self._request_rows(recent, requests, head)
            q = np.searchsorted(requests, owner[lo:lo + chunk]).astype(np.int64) * span + item[lo:lo + chunk]
            out[lo:lo + chunk], out_head[lo:lo + chunk] = _sums_at(local * span + j, w, first, q, len(requests) * span)
        return out, out_head

    def _request_rows(self, recent: np.ndarray, requests: np.ndarray, head: int):
        """The table rows of ``requests``' clicks: (the request's position in ``requests``, the item,
        the weight, the weight if the click is among the first ``head`` else 0)."""
        span = np.int64(self.n_items + 1)
        seq = recent[requests].astype(np.int64)  # [R, L]
        r, t = np.nonzero(seq > 0)
        src = seq[r, t]
        starts, ends = np.searchsorted(self.keys, src * span), np.searchsorted(self.keys, (src + 1) * span)
        counts = ends - starts
        rows = np.repeat(starts - np.cumsum(counts) + counts, counts) + np.arange(counts.sum())
        w = self.weights[rows].astype(np.float64)
        first = np.where(np.repeat(t < head, counts), w, 0.0)
        return np.repeat(r, counts).astype(np.int64), self.keys[rows] % span, w, first


DENSE_SUMS = 8  # a dense count when the key space is at most this many times the entries


def _sums_at(keys: np.ndarray, w: np.ndarray, first: np.ndarray, q: np.ndarray, n_keys: int):
    """The sums of ``w`` and of ``first`` over the entries of each key in ``q`` (keys < ``n_keys``): by a
    dense count when the key space is small next to the entries (a chunk of training lists over a small
    catalog), else by sorting the entries (a request over a million items)."""
    if n_keys <= DENSE_SUMS * len(keys) + 4096:
        return (np.bincount(keys, w, minlength=n_keys)[q], np.bincount(keys, first, minlength=n_keys)[q])
    order = np.argsort(keys, kind="stable")
    keys = keys[order]
    every, head = (np.concatenate([[0.0], np.cumsum(x[order])]) for x in (w, first))
    left, right = np.searchsorted(keys, q, "left"), np.searchsorted(keys, q, "right")
    return every[right] - every[left], head[right] - head[left]


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
