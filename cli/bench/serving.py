"""`sassflow bench serve` and `sassflow bench swap` (keys: BENCHMARKS.md).

Both build synthetic bundles (mean-history tower), start the real service with
``ServerProcess`` and drive it from ``cli.bench.loadgen`` in another process.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

BENCH_USERS = 10_000


def add_bench_parsers(benches) -> None:
    p = benches.add_parser("serve", help="latency/throughput/recall of /recommend on a synthetic catalog")
    p.add_argument("--items", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--duration", type=float, default=30.0)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--k", type=int, default=20, help="items per request")
    p.add_argument("--scenarios", type=int, default=0,
                   help="split the catalog over this many scenarios (default: all of settings.scenarios)")
    p.add_argument("--users", type=int, default=BENCH_USERS, help="synthetic users (their clicks feed the streams)")
    p.add_argument("--rate", type=float, default=None,
                   help="open loop: R requests/s on a fixed schedule (default: closed loop at --concurrency)")
    p.add_argument("--branches", default=None,
                   help="recall branches on, comma-separated (default: settings.recall.branches); the stream "
                        "branches run over structures built from the synthetic users' clicks")
    p.add_argument("--ranking", action="store_true",
                   help="ship (untrained) coarse + fine rankers in the bundle: recall, then ranking of --candidates")
    p.add_argument("--candidates", type=int, default=500, help="candidates per request handed to ranking")
    p.add_argument("--workers", type=int, default=None,
                   help="service processes on the port (default: settings.serving.workers)")
    p.set_defaults(func=bench_serve)
    p = benches.add_parser("swap", help="hot swaps of bundles under steady load")
    p.add_argument("--swaps", type=int, default=10)
    p.add_argument("--duration", type=float, default=60.0)
    p.add_argument("--items", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--concurrency", type=int, default=16)
    p.set_defaults(func=bench_swap)
    from cli.bench.ann import add_ann_parser

    add_ann_parser(benches)


def _say(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def _bench_settings(settings, state_dir: Path, scenarios: list[str], candidates: int | None = None):
    """The caller's serving settings, with all state in a scratch folder, admin disabled, and no
    catalogue consumer (the benches start no broker: its reconnect loop would only add noise)."""
    settings = settings.relocated(state_dir)  # the recall store and the tag catalog too, not the user's
    update = {
        "scenarios": scenarios,
        "serving": settings.serving.model_copy(update={"admin_token": None, "catalog_consumer": False}),
    }
    if candidates:
        update["ranking"] = settings.ranking.model_copy(update={"candidates": candidates})
    return settings.model_copy(update=update)


def _prepare(settings, n_items, dim, seed, n_users: int = BENCH_USERS, ranking: bool = False):
    """Build + publish a synthetic bundle (with untrained rankers when ``ranking``) and the matching
    user table; returns (bundle path, features file, users)."""
    from serving.bundle import build_synthetic_bundle
    from serving.feature_reader import save_recent_clicks
    from serving.synthetic import synthetic_catalog, synthetic_rankers, synthetic_users

    t0 = time.perf_counter()
    catalog = synthetic_catalog(n_items, dim, settings.scenarios, seed)
    rankers = synthetic_rankers(Path(settings.state_dir) / "rankers", catalog, seed).root if ranking else None
    path = build_synthetic_bundle(settings, n_items, dim, seed=seed, progress=_say, catalog=catalog, publish=True,
                                  ranker_dir=rankers)
    _say(f"bundle {path.name} built in {time.perf_counter() - t0:.1f}s")
    users = synthetic_users(catalog, n_users, seed)
    features = Path(settings.state_dir) / "features.npz"
    save_recent_clicks(features, settings.scenarios, users)
    return path, features, users


def _load(url: str, features: Path, duration: float, concurrency: int, k: int = 20, rate: float | None = None,
          branches: str | None = None) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "cli.bench.loadgen", "--url", url, "--features", str(features),
           "--duration", str(duration), "--concurrency", str(concurrency), "--k", str(k)]
    cmd += ["--rate", str(rate)] if rate else []
    cmd += ["--branches", branches] if branches else []
    from sassflow.settings import PROJECT_ROOT

    return subprocess.Popen(cmd, env=env, cwd=PROJECT_ROOT, stdout=subprocess.PIPE, text=True)


def _machine_load() -> dict:
    return {"loadavg_1m": round(os.getloadavg()[0], 2), "cpus": os.cpu_count()}


def _core_and_recall(settings, path: Path, users: dict, k: int, n_queries: int = 2000) -> dict:
    """User tower + FAISS search alone, in-process, one thread; recall@100 of the served index vs exact."""
    import faiss

    from serving.bundle import load_bundle
    from serving.index import recall_at_k

    faiss.omp_set_num_threads(1)
    bundle = load_bundle(path, settings)
    rng = np.random.default_rng(0)
    keys = list(users)
    sample = [keys[i] for i in rng.choice(len(keys), size=min(n_queries, len(keys)), replace=False)]
    times = []
    for user, scenario in sample:
        row = {"user_id": user, "recent_clicks": users[(user, scenario)]}
        t0 = time.perf_counter()
        vec = bundle.tower.encode([row], scenario)
        bundle.catalogs[scenario].search(vec, k + len(row["recent_clicks"]))
        times.append(time.perf_counter() - t0)
    faiss.omp_set_num_threads(max(1, os.cpu_count() or 1))  # exact ground truth is a batch job
    recalls = {}
    for scenario, catalog in bundle.catalogs.items():
        rows = [{"user_id": u, "recent_clicks": users[(u, s)]} for u, s in sample if s == scenario]
        if not rows:
            continue
        queries = bundle.tower.encode(rows, scenario)
        exact = faiss.IndexFlatIP(catalog.index.d)
        exact.add(catalog.index.reconstruct_n(0, catalog.size))
        recalls[scenario] = recall_at_k(catalog.index.search(queries, 100)[1], exact.search(queries, 100)[1])
        del exact
    specs = {s: c.spec for s, c in bundle.catalogs.items()}
    return {
        "core_p50_ms": float(np.percentile(times, 50) * 1000), "core_p99_ms": float(np.percentile(times, 99) * 1000),
        "recall_at_100": float(np.mean(list(recalls.values()))), "recall_at_100_min": float(min(recalls.values())),
        "index_type": ",".join(sorted({s["type"] for s in specs.values()})),
        "index_params": next(iter(specs.values())),
        "items_per_scenario": {s: c.size for s, c in bundle.catalogs.items()},
    }


def bench_serve(args, settings) -> int:
    from cli.output import emit_json
    from cli.local.server import ServerProcess

    from cli.bench.serve_recall import prepare_recall, stage_p99_ms

    scenarios = settings.scenarios[: args.scenarios] if args.scenarios else settings.scenarios
    ranking = bool(getattr(args, "ranking", False))
    with tempfile.TemporaryDirectory(prefix="sassflow-bench-serve-") as tmp:
        bs = _bench_settings(settings, Path(tmp), scenarios, args.candidates if ranking else None)
        bs.serving.workers = args.workers or bs.serving.workers
        branches = args.branches.split(",") if args.branches else list(bs.recall.branches)
        bs.recall.branches = branches
        path, features, users = _prepare(bs, args.items, args.dim, seed=0, n_users=args.users, ranking=ranking)
        recall_prep = prepare_recall(bs, users, args.items, args.dim, seed=0, progress=_say)
        load_before = _machine_load()
        with ServerProcess(bs, static_features=features, log_path=Path(tmp) / "server.log") as srv:
            srv.wait_ready(timeout=600)
            load = f"{args.rate} requests/s (open loop)" if args.rate else f"{args.concurrency} connections"
            _say(f"service ready on {srv.url}; {load} for {args.duration}s")
            import httpx
            import psutil

            server_procs = [psutil.Process(srv.pid)] + psutil.Process(srv.pid).children(recursive=True)

            def server_cpu() -> float:  # the service's processes: the supervisor and its workers
                return sum(sum(p.cpu_times()[:2]) for p in server_procs)

            cpu0 = server_cpu()
            gen = _load(srv.url, features, args.duration, args.concurrency, args.k, args.rate)
            out, _ = gen.communicate()
            server_cpu_s = server_cpu() - cpu0
            result = json.loads(out.strip().splitlines()[-1])
            all_requests = sum(result["versions"].values())  # including the warm-up
            stages = stage_p99_ms(httpx.get(srv.url + "/metrics").text)
        _say("measuring the in-process core and recall against exact search")
        core = _core_and_recall(bs, path, users, args.k)
        emit_json({
            "items": args.items, "dim": args.dim, "scenarios": len(scenarios), "k": args.k,
            "concurrency": args.concurrency if not args.rate else None, "duration_s": args.duration,
            "mode": result["mode"], "offered_qps": result["offered_qps"], "sent": result["sent"],
            "connections": result["connections"], "branches": branches, "recall_structures": recall_prep,
            "p50_ms": result["p50_ms"], "p90_ms": result["p90_ms"], "p99_ms": result["p99_ms"],
            "qps": result["qps"], "requests": result["requests"], "errors": result["errors"],
            # CPU per request is what the shared machine cannot distort: capacity ≈ cores / this.
            "server_cpu_ms_per_request": 1000 * server_cpu_s / max(1, all_requests),
            "client_cpu_ms_per_request": 1000 * result["client_cpu_s"] / max(1, all_requests),
            "core_p50_ms": core["core_p50_ms"], "core_p99_ms": core["core_p99_ms"],
            "overhead_ratio": result["p50_ms"] / core["core_p50_ms"],
            "recall_at_100": core["recall_at_100"], "recall_at_100_min_scenario": core["recall_at_100_min"],
            "index_type": core["index_type"], "index_params": core["index_params"],
            "items_per_scenario": core["items_per_scenario"],
            "ranking": ranking, "candidates": args.candidates if ranking else args.k, "stage_p99_ms": stages,
            "workers": bs.serving.workers,
            "machine_before": load_before, "machine_after": _machine_load(),
        })
    return 0


def _rss_sampler(pid: int, stop: threading.Event, samples: list, interval: float = 0.05) -> threading.Thread:
    import psutil

    proc = psutil.Process(pid)

    def run():
        while not stop.is_set():
            try:
                samples.append((time.time(), proc.memory_info().rss))
            except psutil.Error:
                return
            stop.wait(interval)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def bench_swap(args, settings) -> int:
    import httpx

    from cli.output import emit_json
    from serving.bundle import build_synthetic_bundle, publish_bundle
    from serving.metrics import metric_value
    from cli.local.server import ServerProcess

    with tempfile.TemporaryDirectory(prefix="sassflow-bench-swap-") as tmp:
        bs = _bench_settings(settings, Path(tmp), settings.scenarios)
        first, features, _ = _prepare(bs, args.items, args.dim, seed=0)
        # The new versions are built before the run: building is the pipeline's job, not the
        # service's, and would only add CPU noise on a 2-core machine.
        new = []
        for i in range(args.swaps):
            t0 = time.perf_counter()
            new.append(build_synthetic_bundle(bs, args.items, args.dim, seed=100 + i, model_version=f"swap-{i + 1}").name)
            _say(f"bundle {i + 1}/{args.swaps} built in {time.perf_counter() - t0:.1f}s")
        with ServerProcess(bs, static_features=features, log_path=Path(tmp) / "server.log") as srv:
            srv.wait_ready(timeout=600)
            samples: list = []
            stop = threading.Event()
            _rss_sampler(srv.pid, stop, samples)
            load_before = _machine_load()
            warmup = 2.0
            gen = _load(srv.url, features, args.duration, args.concurrency)
            time.sleep(warmup + min(5.0, args.duration / (args.swaps + 1)))
            baseline_rss = max(rss for _, rss in samples)  # one bundle loaded, under load
            swap_start = time.time()
            published = {}
            gap = (args.duration - 5.0) / (args.swaps + 1)
            for i, bundle_id in enumerate(new):
                publish_bundle(bs, bundle_id)  # validates first (as a service would), then writes CURRENT
                published[bundle_id] = time.time()
                _say(f"published {i + 1}/{args.swaps}: {bundle_id}")
                time.sleep(gap)
            out, _ = gen.communicate()
            stop.set()
            result = json.loads(out.strip().splitlines()[-1])
            metrics = httpx.get(srv.url + "/metrics").text
        swaps_applied = int(metric_value(metrics, "sassflow_bundle_swaps_total")) - 1  # minus the first load
        refused = int(metric_value(metrics, "sassflow_bundles_refused_total"))
        latencies = {b: result["first_seen"][b] - t for b, t in published.items() if b in result["first_seen"]}
        peak_rss = max(rss for t, rss in samples if t >= swap_start)
        emit_json({
            "items": args.items, "dim": args.dim, "swaps": args.swaps, "duration_s": args.duration,
            "requests": result["requests"], "failed": result["errors"],
            "error_samples": result["error_samples"], "swaps_applied": swaps_applied, "refused": refused,
            "swap_latency_max_s": max(latencies.values()) if len(latencies) == len(published) else None,
            "swap_latency_mean_s": float(np.mean(list(latencies.values()))) if latencies else None,
            "swaps_never_seen": sorted(set(published) - set(latencies)),
            "peak_rss_ratio": peak_rss / baseline_rss, "baseline_rss_mb": baseline_rss / 2**20,
            "peak_rss_mb": peak_rss / 2**20, "versions_seen": len(result["versions"]),
            "p50_ms": result["p50_ms"], "p99_ms": result["p99_ms"], "qps": result["qps"],
            "machine_before": load_before, "machine_after": _machine_load(),
        })
    return 0
