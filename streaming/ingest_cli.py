"""`sassflow ingest` (the consumer processes) and `sassflow bench ingest`."""
from __future__ import annotations

import os
import signal
import sys


def _stage_main(settings, stage: str, shard: int, shards: int, index: int, max_events, until_idle,
                results=None) -> None:
    import logging

    logging.basicConfig(level=os.environ.get("SASSFLOW_LOG_LEVEL", "WARNING"),
                        format=f"%(asctime)s {stage}{index} %(levelname)s %(message)s")
    from streaming.consumer import run_stage

    r = run_stage(settings, stage, shard=shard, shards=shards, index=index,
                  max_events=max_events, until_idle=until_idle)
    print(f"{stage} consumer {index}: {r.records} records, {r.applied} applied", file=sys.stderr)
    if results is not None:
        results.put((stage, index, r))


def spawn_stages(settings, processes: int, item_shards: int | None = None, max_events: int | None = None,
                 until_idle: float | None = None, results=None) -> list:
    """Start ``processes`` user-stage consumers (one group) and ``item_shards`` (default: settings)
    item-stage consumers as separate OS processes (spawn, never fork)."""
    import multiprocessing as mp

    shards = item_shards or settings.streaming.item_shards
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_stage_main, args=(settings, "user", 0, 1, i, max_events, until_idle, results))
             for i in range(processes)]
    procs += [ctx.Process(target=_stage_main, args=(settings, "item", k, shards, processes + k, max_events, until_idle,
                                                    results))
              for k in range(shards)]
    for p in procs:
        p.start()
    return procs


def run_ingest(settings, processes: int = 1, item_shards: int | None = None, max_events: int | None = None,
               until_idle: float | None = None) -> int:
    """Run the ingest consumers (``spawn_stages``); forward SIGTERM; wait for all."""
    from features.store import apply_definitions
    from streaming.broker import ensure_topics

    ensure_topics(settings)
    apply_definitions(settings)
    procs = spawn_stages(settings, processes, item_shards, max_events, until_idle)

    def forward(signum, _frame):
        for p in procs:
            if p.is_alive():
                os.kill(p.pid, signal.SIGTERM)

    old = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        for p in procs:
            p.join()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    return max((p.exitcode or 0) for p in procs)


def cmd_ingest(args, settings) -> int:
    if args.online_store:
        settings.feast.online_store = args.online_store
    return run_ingest(settings, args.processes, args.item_shards, args.max_events, args.until_idle)


def register(commands, benches) -> None:
    p = commands.add_parser("ingest", help="consume events into the feature store and the offline history")
    p.add_argument("--processes", type=int, default=1, help="user-stage consumer processes (<= partitions)")
    p.add_argument("--item-shards", type=int, default=None, help="item-stage processes (default: settings)")
    p.add_argument("--online-store", choices=["sqlite", "redis"], default=None)
    p.add_argument("--max-events", type=int, default=None, help="each process stops after this many records")
    p.add_argument("--until-idle", type=float, default=None, help="stop after S seconds without records")
    p.set_defaults(func=cmd_ingest)

    b = benches.add_parser("ingest", help="throughput, freshness and exactness of the ingest pipeline")
    b.add_argument("--events", type=int, default=200_000)
    b.add_argument("--consumers", type=int, default=1)
    b.add_argument("--online-store", choices=["sqlite", "redis"], default="redis")
    b.add_argument("--rate", type=float, default=2000.0, help="events/s of the freshness phase")
    b.add_argument("--freshness-seconds", type=float, default=15.0)
    b.set_defaults(func=cmd_bench_ingest)


def cmd_bench_ingest(args, settings) -> int:
    from streaming.bench_ingest import bench_ingest
    from sassflow.cli import emit_json

    emit_json(bench_ingest(settings, args.events, args.consumers, args.online_store, args.rate, args.freshness_seconds))
    return 0
