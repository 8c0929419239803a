"""An HTTP load generator for the benchmarks (run as its own process).

Closed loop (default): ``--concurrency`` keep-alive connections each send ``GET /recommend`` for a
random (user, scenario) of the feature table, wait for the answer and send the next.
Open loop (``--rate R``): requests are due on a fixed schedule, R per second, whatever the answers'
latency; each due request goes out on an idle keep-alive connection (a new one when all are busy),
and its latency counts from the moment it was due, so a server that falls behind shows its queue.  A minimal asyncio HTTP/1.1 client keeps the generator's own CPU cost
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


def _request(host: str, user, scenario: str, k: int, branches: str | None) -> bytes:
    extra = f"&branches={branches}" if branches else ""
    return (f"GET /recommend?user_id={user}&scenario={scenario}&k={k}{extra} HTTP/1.1\r\n"
            f"Host: {host}\r\n\r\n").encode()


async def _exchange(reader, writer, request: bytes) -> tuple[int, bytes]:
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    return status, await reader.readexactly(length)


def _record(out: dict, status: int, body: bytes, dt: float, recorded: bool) -> None:
    if status != 200:
        out["errors"] += 1
        out["error_samples"].append(f"{status} {body[:200]!r}")
        return
    bundle_id = json.loads(body)["bundle_id"]
    if bundle_id not in out["first_seen"]:
        out["first_seen"][bundle_id] = time.time()
    out["versions"][bundle_id] = out["versions"].get(bundle_id, 0) + 1
    if recorded:
        out["latencies"].append(dt)


def _failed(out: dict, exc: Exception) -> None:
    out["errors"] += 1
    out["error_samples"].append(repr(exc)[:200])


async def _connection(host, port, keys, rng, stop_at, record_from, out, k, branches=None):
    reader = writer = None
    while time.monotonic() < stop_at:
        user, scenario = keys[rng.integers(len(keys))]
        t0 = time.perf_counter()
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection(host, port)
            status, body = await _exchange(reader, writer, _request(host, user, scenario, k, branches))
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            _failed(out, exc)
            writer = None
            await asyncio.sleep(0.01)
            continue
        _record(out, status, body, time.perf_counter() - t0, time.monotonic() >= record_from)


# uvicorn closes a keep-alive connection idle for 5 s; a client that sends on it as it closes reads
# nothing back.  Like any HTTP client pool, the generator does not reuse connections that close to it.
IDLE_REUSE_S = 2.0


async def _open_loop(host, port, keys, rng, rate: float, start: float, stop_at: float, record_from: float, out,
                     k: int, branches=None, max_connections: int = 1024):
    """Send request i at start + i / rate; latency counts from that due time."""
    idle: list = []
    tasks: set = set()
    opened = 0

    async def one(due: float, user, scenario):  # due: time.monotonic() at which the request was due
        nonlocal opened
        conn = None
        while idle and conn is None:  # newest first; one idle near the server's keep-alive limit is dropped
            conn, since = idle.pop()
            if time.monotonic() - since > IDLE_REUSE_S:
                conn[1].close()
                conn = None
        try:
            if conn is None:
                opened += 1
                conn = await asyncio.open_connection(host, port)
            status, body = await _exchange(*conn, _request(host, user, scenario, k, branches))
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            _failed(out, exc)
            return
        idle.append((conn, time.monotonic()))
        _record(out, status, body, time.monotonic() - due, due >= record_from)

    i = 0
    while True:
        due_mono = start + i / rate
        if due_mono >= stop_at:
            break
        delay = due_mono - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        if len(tasks) >= max_connections:  # the client's own limit: counted, never silently queued
            out["errors"] += 1
            out["error_samples"].append("client connection limit reached")
        else:
            user, scenario = keys[rng.integers(len(keys))]
            t = asyncio.ensure_future(one(due_mono, user, scenario))
            tasks.add(t)
            t.add_done_callback(tasks.discard)
        i += 1
    out["sent"] = i
    out["connections"] = opened
    if tasks:
        await asyncio.wait(tasks, timeout=30)


async def run(url: str, keys, duration: float, concurrency: int, warmup: float, k: int, seed: int,
              rate: float | None = None, branches: str | None = None) -> dict:
    host, port = url.removeprefix("http://").split(":")
    out = {"errors": 0, "error_samples": [], "first_seen": {}, "versions": {}, "latencies": []}
    start = time.monotonic()
    if rate:
        await _open_loop(host, int(port), keys, np.random.default_rng(seed), rate, start, start + warmup + duration,
                         start + warmup, out, k, branches)
    else:
        rngs = [np.random.default_rng(seed + i) for i in range(concurrency)]
        await asyncio.gather(*[
            _connection(host, int(port), keys, rngs[i], start + warmup + duration, start + warmup, out, k, branches)
            for i in range(concurrency)
        ])
    lat = np.asarray(out.pop("latencies")) * 1000
    return {
        "mode": "open" if rate else "closed", "offered_qps": rate, "sent": out.pop("sent", None),
        "connections": out.pop("connections", concurrency),
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
    ap.add_argument("--rate", type=float, default=None, help="open loop: requests per second on a fixed schedule")
    ap.add_argument("--branches", default=None, help="the branches= query parameter")
    args = ap.parse_args()
    with np.load(args.features, allow_pickle=False) as z:
        names = z["scenarios"]
        keys = list(zip(z["user_ids"].tolist(), [str(names[i]) for i in z["scenario_idx"]]))
    coro = run(args.url, keys, args.duration, args.concurrency, args.warmup, args.k, args.seed, args.rate,
               args.branches)
    try:
        import uvloop

        result = uvloop.run(coro)
    except ImportError:
        result = asyncio.run(coro)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
