"""`sassflow bench ann`: every ANN backend / index type on one synthetic catalog (keys: BENCHMARKS.md).

Per backend: build time and index size (in this process), then, in a fresh process each (so the
memory figures are the backend's own): load time, recall@100 against exact search, latency of
single-query searches from 16 threads at once, and the peak RSS while a second copy is loaded
beside the first (what a hot swap costs).  The default is the fastest (p99) backend whose
recall@100 reaches ``MIN_RECALL``.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

MIN_RECALL = 0.95
# name -> serving settings that make index_spec pick it (the same knobs serving uses)
BACKENDS = {
    "faiss-ivf": {"ann_backend": "faiss", "ann_index": "ivf"},
    "faiss-hnsw": {"ann_backend": "faiss", "ann_index": "hnsw"},
    "hnswlib-hnsw": {"ann_backend": "hnswlib"},
}


def add_ann_parser(benches) -> None:
    p = benches.add_parser("ann", help="ANN backends: build, size, load, recall@100, latency, swap memory")
    p.add_argument("--items", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--duration", type=float, default=10.0, help="seconds of concurrent searches per backend")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--backends", default=",".join(BACKENDS))
    p.set_defaults(func=bench_ann)


def _say(msg: str) -> None:
    print(f"[bench ann] {msg}", file=sys.stderr, flush=True)


def _queries(catalog, n: int, seed: int) -> np.ndarray:
    """User-like queries: the normalised mean of a few items of one topic (the mean-history tower)."""
    rng = np.random.default_rng(seed)
    out = np.zeros((n, catalog.vectors.shape[1]), np.float32)
    for q in range(n):
        members = np.flatnonzero(catalog.topics == catalog.topics[rng.integers(len(catalog.topics))])
        v = catalog.vectors[rng.choice(members, size=min(5, len(members)), replace=False)].mean(0)
        out[q] = v / np.linalg.norm(v)
    return out


def _exact(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    import faiss

    faiss.omp_set_num_threads(os.cpu_count() or 1)  # ground truth is a batch job
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    return index.search(queries, k)[1]


def _rss_peak(stop: threading.Event, out: list) -> threading.Thread:
    import psutil

    proc = psutil.Process()

    def run():
        while not stop.is_set():
            out.append(proc.memory_info().rss)
            stop.wait(0.01)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def _latencies(index, queries: np.ndarray, concurrency: int, duration: float) -> np.ndarray:
    from serving.index import search

    stop_at = time.monotonic() + duration
    per_thread: list[list[float]] = [[] for _ in range(concurrency)]

    def run(t: int):
        rng = np.random.default_rng(t)
        while time.monotonic() < stop_at:
            q = queries[rng.integers(len(queries))][None, :]
            t0 = time.perf_counter()
            search(index, q, 100)
            per_thread[t].append(time.perf_counter() - t0)

    threads = [threading.Thread(target=run, args=(t,)) for t in range(concurrency)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return np.asarray([x for lat in per_thread for x in lat]) * 1000


def measure_loaded(path: str, spec: dict, dim: int, queries: np.ndarray, exact: np.ndarray,
                   concurrency: int, duration: float, results) -> None:
    """The child process: load, recall, latency, then a second copy loaded beside the first."""
    import faiss
    import psutil

    from serving.index import read_index, recall_at_k, search

    faiss.omp_set_num_threads(1)
    t0 = time.perf_counter()
    index = read_index(path, spec, dim)
    load_s = time.perf_counter() - t0
    recall = recall_at_k(search(index, queries, 100)[1], exact)
    lat = _latencies(index, queries, concurrency, duration)
    baseline = psutil.Process().memory_info().rss
    samples: list = []
    stop = threading.Event()
    sampler = _rss_peak(stop, samples)
    second = read_index(path, spec, dim)
    search(second, queries[:10], 100)
    stop.set()
    sampler.join()
    results.put({"load_s": load_s, "recall_at_100": recall, "p50_ms": float(np.percentile(lat, 50)),
                 "p99_ms": float(np.percentile(lat, 99)), "searches": int(len(lat)),
                 "rss_mb": baseline / 2**20, "swap_peak_rss_mb": max(samples + [baseline]) / 2**20})


def bench_ann(args, settings) -> int:
    from cli.output import emit_json
    from serving.synthetic import synthetic_catalog

    t0 = time.perf_counter()
    catalog = synthetic_catalog(args.items, args.dim, ["all"], seed=0)["all"]
    queries = _queries(catalog, args.queries, seed=1)
    exact = _exact(catalog.vectors, queries, 100)
    _say(f"{args.items} x {args.dim} vectors, {args.queries} queries, exact top-100 in {time.perf_counter() - t0:.1f}s")
    rows = []
    with tempfile.TemporaryDirectory(prefix="sassflow-bench-ann-") as tmp:
        for name in args.backends.split(","):
            rows.append(measure_backend(name, BACKENDS[name], settings, catalog.vectors, queries, exact, args, Path(tmp)))
            _say(f"{name}: {rows[-1]}")
    emit_json({"items": args.items, "dim": args.dim, "concurrency": args.concurrency, "backends": rows,
               "default": choose_default(rows), "min_recall": MIN_RECALL})
    return 0


def measure_backend(name: str, overrides: dict, settings, vectors, queries, exact, args, tmp: Path) -> dict:
    """Build (here), then load/recall/latency/swap memory in a fresh process."""
    from serving.index import build_index, index_spec, write_index

    serving = settings.serving.model_copy(update={**overrides, "exact_index_max_items": 0})
    spec = index_spec(len(vectors), serving)
    t0 = time.perf_counter()
    index = build_index(vectors, spec, seed=0)
    build_s = time.perf_counter() - t0
    path = tmp / name
    write_index(index, path)
    del index
    index_mb = path.stat().st_size / 2**20
    _say(f"{name}: built in {build_s:.1f}s, {index_mb:.0f} MB; measuring in a fresh process")
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    child = ctx.Process(target=measure_loaded, args=(str(path), spec, vectors.shape[1], queries, exact,
                                                    args.concurrency, args.duration, results))
    child.start()
    loaded = results.get()
    child.join()
    path.unlink()
    return {"name": name, "spec": spec, "build_s": build_s, "index_mb": index_mb, **loaded}


def choose_default(rows: list[dict]) -> str | None:
    """The lowest p99 among the backends with recall@100 >= MIN_RECALL (ties: the faster build)."""
    good = [r for r in rows if r["recall_at_100"] >= MIN_RECALL]
    return min(good, key=lambda r: (r["p99_ms"], r["build_s"]))["name"] if good else None
