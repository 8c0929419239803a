"""ANN backends besides FAISS, behind the surface ``serving.index`` uses of a FAISS index
(``ntotal``, ``d``, ``search``, ``reconstruct_batch``, ``reconstruct_n``), so a catalog, the
mean-history tower and the benchmarks run on any backend unchanged.

* ``hnswlib`` -- HNSW (the graph family of the seed's nmslib; hnswlib is nmslib's HNSW as a
  standalone library): inner-product space, one thread per search (request concurrency comes from
  serving many requests).  Its ``ip`` distance is 1 - <q, v>, turned back into the inner product.
"""
from __future__ import annotations

import numpy as np


class HnswlibIndex:
    def __init__(self, index):
        self.index = index

    @property
    def ntotal(self) -> int:
        return int(self.index.get_current_count())

    @property
    def d(self) -> int:
        return int(self.index.dim)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(inner products [B, k], rows [B, k]), best first."""
        rows, dist = self.index.knn_query(np.ascontiguousarray(queries, dtype=np.float32), k=k, num_threads=1)
        return (1.0 - dist).astype(np.float32), rows.astype(np.int64)

    def reconstruct_batch(self, rows: np.ndarray) -> np.ndarray:
        return np.asarray(self.index.get_items(np.asarray(rows, dtype=np.int64).tolist()), dtype=np.float32)

    def reconstruct_n(self, start: int, n: int) -> np.ndarray:
        return self.reconstruct_batch(np.arange(start, start + n))

    def vectors_finite(self, chunk: int = 1 << 16) -> bool:
        """Every stored vector finite (hnswlib keeps them raw: read back in chunks of rows)."""
        return all(np.isfinite(self.reconstruct_n(i, min(chunk, self.ntotal - i))).all()
                   for i in range(0, self.ntotal, chunk))


def build_hnswlib(vectors: np.ndarray, spec: dict, seed: int = 0) -> HnswlibIndex:
    import hnswlib

    n, d = vectors.shape
    index = hnswlib.Index(space="ip", dim=d)
    index.init_index(max_elements=n, ef_construction=spec["ef_construction"], M=spec["m"], random_seed=seed)
    index.add_items(vectors, np.arange(n), num_threads=1)  # one core: the build must not starve serving
    return configure_hnswlib(HnswlibIndex(index), spec)


def configure_hnswlib(index: HnswlibIndex, spec: dict) -> HnswlibIndex:
    index.index.set_ef(spec["ef_search"])
    index.index.set_num_threads(1)
    return index


def write_hnswlib(index: HnswlibIndex, path) -> None:
    index.index.save_index(str(path))


def read_hnswlib(path, spec: dict) -> HnswlibIndex:
    import hnswlib

    index = hnswlib.Index(space="ip", dim=spec["dim"])
    index.load_index(str(path))
    return configure_hnswlib(HnswlibIndex(index), spec)
