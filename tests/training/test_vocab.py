"""Raw id -> index (training.vocab.Vocab): the table and the binary search give the same answers."""
from __future__ import annotations

import numpy as np

from training.vocab import Vocab


def test_dense_and_sparse_ids_map_alike():
    rng = np.random.default_rng(0)
    small = np.unique(rng.integers(0, 5000, 3000))  # a table
    sparse = np.unique(rng.integers(0, 1 << 50, 3000))  # hashes: the binary search
    for ids in (small, sparse):
        v = Vocab(ids)
        assert (v._table is not None) == (ids is small)
        queries = np.concatenate([[-1, -(1 << 40), ids.max() + 1, 1 << 60], rng.integers(0, 5000, 50), ids[::7]])
        queries = queries[: len(queries) // 2 * 2]
        pos = np.searchsorted(ids, queries).clip(0, len(ids) - 1)
        expected = np.where(ids[pos] == queries, pos + 1, 0)
        np.testing.assert_array_equal(v.index(queries), expected)
        np.testing.assert_array_equal(v.index(queries.reshape(-1, 2)), expected.reshape(-1, 2))  # any shape
    assert (Vocab(np.zeros(0, np.int64)).index([1, 2]) == 0).all()
