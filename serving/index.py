"""Per-scenario ANN indexes: which backend and kind, how to build it, how to search it.

Exact indexes are FAISS; the approximate ones are hnswlib's by default (``ann_backend``,
``serving.ann_backends``), recorded in the spec as ``"backend"`` (absent: FAISS, so older bundles
read as before), or FAISS IVF/HNSW with ``ann_backend = "faiss"``.

Scores are inner products (the towers emit vectors whose dot product is the
relevance).  Small catalogs get an exact ``IndexFlatIP``; above
``exact_index_max_items`` an approximate index (HNSW or IVF, ``ann_index`` in
settings) whose parameters all come from settings and are recorded in the
bundle manifest, so a bundle is searched exactly as it was built and
validated.  FAISS internal ids are row numbers into the scenario's
``item_ids.npy``; the raw item id is ``item_ids[row]`` (an id array instead
of ``IndexIDMap2`` keeps ``reconstruct`` available for the mean-history tower).
"""
from __future__ import annotations

import math

import faiss
import numpy as np

from sassflow.settings import ServingSettings
from training.vocab import Vocab


def index_spec(n_items: int, settings: ServingSettings) -> dict:
    """The index type and parameters for a catalog of ``n_items`` (pure; goes into the manifest)."""
    if n_items <= settings.exact_index_max_items:
        return {"type": "flat"}
    if settings.ann_backend == "hnswlib":
        return {"backend": "hnswlib", "type": "hnsw", "m": settings.hnsw_m, "ef_construction": settings.hnsw_ef_construction,
                "ef_search": settings.hnsw_ef_search}
    if settings.ann_index == "hnsw":
        return {
            "type": "hnsw",
            "m": settings.hnsw_m,
            "ef_construction": settings.hnsw_ef_construction,
            "ef_search": settings.hnsw_ef_search,
        }
    nlist = settings.ivf_nlist or int(4 * math.sqrt(n_items))
    nlist = max(1, min(nlist, n_items // 39))  # FAISS wants >= 39 training points per centroid
    return {"type": "ivf", "nlist": nlist, "nprobe": min(settings.ivf_nprobe, nlist)}


def build_index(vectors: np.ndarray, spec: dict, seed: int = 0) -> faiss.Index:
    """A filled index over ``vectors`` (float32 [n, d]); row i gets id i."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, d = vectors.shape
    if spec.get("backend") == "hnswlib":
        from serving.ann_backends import build_hnswlib

        return build_hnswlib(vectors, spec, seed)
    kind = spec["type"]
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, spec["m"], faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = spec["ef_construction"]
    elif kind == "ivf":
        quantizer = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFFlat(quantizer, d, spec["nlist"], faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = seed
        # k-means on a sample: 64 points per centroid is plenty and keeps 1M-item builds short.
        index.cp.max_points_per_centroid = 64
        index.train(vectors)
        index.own_fields = True  # the index frees its quantizer...
        quantizer.this.disown()  # ...so Python must not free it a second time
    else:
        raise ValueError(f"unknown index type {kind!r}")
    index.add(vectors)
    return index


def configure_search(index: faiss.Index, spec: dict) -> faiss.Index:
    """Apply the search-time parameters recorded in the manifest (they are not all persisted)."""
    if spec["type"] == "hnsw":
        faiss.downcast_index(index).hnsw.efSearch = spec["ef_search"]
    elif spec["type"] == "ivf":
        ivf = faiss.extract_index_ivf(index)
        ivf.nprobe = spec["nprobe"]
        ivf.make_direct_map()  # reconstruct(row) for the mean-history tower
    return index


def write_index(index: faiss.Index, path) -> None:
    if hasattr(index, "index"):  # a serving.ann_backends wrapper
        from serving.ann_backends import write_hnswlib

        write_hnswlib(index, path)
        return
    faiss.write_index(index, str(path))


def read_index(path, spec: dict, dim: int | None = None) -> faiss.Index:
    """The index written for ``spec`` (``dim``: the vectors' dimension, which hnswlib files lack)."""
    if spec.get("backend") == "hnswlib":
        from serving.ann_backends import read_hnswlib

        return read_hnswlib(path, {**spec, "dim": dim})
    return configure_search(faiss.read_index(str(path)), spec)


def search(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores [B, k], rows [B, k]); a row of -1 means fewer than k results."""
    k = max(1, min(k, index.ntotal))
    return index.search(np.ascontiguousarray(queries, dtype=np.float32), k)


def item_vectors(index: faiss.Index, rows: np.ndarray) -> np.ndarray:
    """The stored vectors of ``rows`` (flat, HNSW-flat and IVF-flat keep them exactly)."""
    rows = np.ascontiguousarray(rows, dtype=np.int64)
    if len(rows) == 0:
        return np.zeros((0, index.d), dtype=np.float32)
    return index.reconstruct_batch(rows)


def vectors_finite(index: faiss.Index, chunk: int = 1 << 20) -> bool:
    """True when every stored vector is finite (no NaN/inf).  Reads the storage in place (flat,
    HNSW-flat, IVF-flat keep raw float32 rows) instead of reconstructing row by row."""
    if not isinstance(index, faiss.Index):  # another backend (serving.ann_backends) checks its own
        return index.vectors_finite()
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexHNSW):
        index = faiss.downcast_index(index.storage)
    if isinstance(index, faiss.IndexFlat):
        stored = faiss.rev_swig_ptr(index.get_xb(), index.ntotal * index.d)
        return all(np.isfinite(stored[i:i + chunk]).all() for i in range(0, stored.size, chunk))
    ivf = faiss.extract_index_ivf(index)
    lists = ivf.invlists
    for i in range(ivf.nlist):
        size = lists.list_size(i)
        if size and not np.isfinite(faiss.rev_swig_ptr(lists.get_codes(i), size * lists.code_size)
                                    .view(np.float32)).all():
            return False
    return True


def recall_at_k(approx_rows: np.ndarray, exact_rows: np.ndarray) -> float:
    """Mean fraction of the exact top-k found by the approximate search."""
    hits = [len(set(a[a >= 0]) & set(e[e >= 0])) / max(1, (e >= 0).sum()) for a, e in zip(approx_rows, exact_rows)]
    return float(np.mean(hits)) if hits else 0.0


class ScenarioCatalog:
    """One scenario's searchable catalog: the index, its row → raw item id map, and popularity."""

    def __init__(self, scenario: str, index: faiss.Index, item_ids: np.ndarray, popular: np.ndarray, spec: dict):
        self.scenario = scenario
        self.index = index
        self.item_ids = np.ascontiguousarray(item_ids, dtype=np.int64)
        self.popular = np.ascontiguousarray(popular, dtype=np.int64)
        self.spec = spec
        # raw id -> row through a vocabulary of the sorted ids (a table or a binary search; no Python
        # dict of a million entries)
        self._order = np.argsort(self.item_ids, kind="stable")
        self._ids = Vocab(self.item_ids[self._order])
        # New items since the bundle was built (``serving.content.FreshItems``): a small side index,
        # replaced whole by one assignment off the request path and searched with the main one.
        self.fresh = None

    @property
    def size(self) -> int:
        return int(self.index.ntotal)

    def rows_of(self, raw_ids) -> np.ndarray:
        """Rows of the raw ids that are in this catalog (unknown ids are dropped)."""
        rows, found = self.lookup(raw_ids)
        return rows[found]

    def lookup(self, raw_ids) -> tuple[np.ndarray, np.ndarray]:
        """(rows, found) aligned with ``raw_ids``: the row of each id in this catalog, where ``found``."""
        pos = self._ids.index(np.asarray(raw_ids, dtype=np.int64).reshape(-1))
        found = pos > 0
        return (self._order[pos - 1] if len(self._order) else np.zeros(len(pos), np.int64)), found

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores [B, k'], raw item ids [B, k']) with -1 ids where the index ran out."""
        scores, rows = search(self.index, queries, k)
        ids = np.where(rows >= 0, self.item_ids[np.maximum(rows, 0)], -1)
        fresh = self.fresh  # one read: a concurrent replacement is seen whole or not at all
        if fresh is None or len(fresh.item_ids) == 0:
            return scores, ids
        f_scores, f_ids = fresh.search(queries, k)
        scores, ids = np.concatenate([scores, f_scores], 1), np.concatenate([ids, f_ids], 1)
        top = np.argsort(-np.where(ids >= 0, scores, -np.inf), axis=1, kind="stable")[:, :k]
        return np.take_along_axis(scores, top, 1), np.take_along_axis(ids, top, 1)
