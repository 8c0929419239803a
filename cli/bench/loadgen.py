"""A closed-loop HTTP load generator for the benchmarks (run as its own process).

``--concurrency`` keep-alive connections each send ``GET /recommend`` for a
random (user, scenario) of the feature table, wait for the answer and send the
next.  A minimal asyncio HTTP/1.1 client keeps the generator's own CPU cost
far below the server's, which matters on a 2-core machine where both share
the cores.  Prints one JSON object: latencies, errors, and for every bundle id
seen the wall-clock time of its first response (the swap benchmark's
"publish → first response from the new version").
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

import numpy as np


async def _connection(host, port, keys, rng, stop_at, record_from, out, k):
    reader = writer = None
    while time.monotonic() < stop_at:
        user, scenario = keys[rng.integers(len(keys))]
        request = (f"GET /recommend?user_id={user}&scenario={scenario}&k={k} HTTP/1.1\r\n"
                   f"Host: {host}\r\n\r\n").encode()
        t0 = time.perf_counter()
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection(host, port)
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            body = await reader.readexactly(length)
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            out["errors"] += 1
            out["error_samples"].append(repr(exc)[:200])
            writer = None
            await asyncio.sleep(0.01)
            continue
        dt = time.perf_counter() - t0
        now = time.monotonic()
        if status != 200:
            out["errors"] += 1
            out["error_samples"].append(f"{status} {body[:200]!r}")
            continue
        bundle_id = json.loads(body)["bundle_id"]
        if bundle_id not in out["first_seen"]:
            out["first_seen"][bundle_id] = time.time()
        out["versions"][bundle_id] = out["versions"].get(bundle_id, 0) + 1
        if now >= record_from:
            out["latencies"].append(dt)


async def run(url: str, keys, duration: float, concurrency: int, warmup: float, k: int, seed: int) -> dict:
    host, port = url.removeprefix("http://").split(":")
    out = {"errors": 0, "error_samples": [], "first_seen": {}, "versions": {}, "latencies": []}
    start = time.monotonic()
    rngs = [np.random.default_rng(seed + i) for i in range(concurrency)]
    await asyncio.gather(*[
        _connection(host, int(port), keys, rngs[i], start + warmup + duration, start + warmup, out, k)
        for i in range(concurrency)
    ])
    lat = np.asarray(out.pop("latencies")) * 1000
    return {
        "requests": int(len(lat)), "qps": len(lat) / duration,
        "p50_ms": float(np.percentile(lat, 50)) if len(lat) else None,
        "p90_ms": float(np.percentile(lat, 90)) if len(lat) else None,
        "p99_ms": float(np.percentile(lat, 99)) if len(lat) else None,
        "max_ms": float(lat.max()) if len(lat) else None,
        "errors": out["errors"], "error_samples": out["error_samples"][:5],
        "first_seen": out["first_seen"], "versions": out["versions"],
        "client_cpu_s": time.process_time(),
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--features", required=True, help="npz table of serving.feature_reader.save_recent_clicks")
    ap.add_argument("--duration", type=float, default=30)
    ap.add_argument("--warmup", type=float, default=2)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    with np.load(args.features, allow_pickle=False) as z:
        names = z["scenarios"]
        keys = list(zip(z["user_ids"].tolist(), [str(names[i]) for i in z["scenario_idx"]]))
    coro = run(args.url, keys, args.duration, args.concurrency, args.warmup, args.k, args.seed)
    try:
        import uvloop

        result = uvloop.run(coro)
    except ImportError:
        result = asyncio.run(coro)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
