"""`sassflow kafka …`, `sassflow produce` (events or the item catalogue), `sassflow readback`, `sassflow ingest`,
`sassflow ingest-catalog`, `sassflow bench ingest`."""
from __future__ import annotations

import json
import sys
from pathlib import Path


def register(commands, benches) -> None:
    kafka = commands.add_parser("kafka", help="run the local single-node Kafka broker (KRaft)")
    kafka.add_argument("action", choices=["start", "stop", "status"])
    kafka.add_argument("--port", type=int, help="broker port (default: settings.local_kafka.port)")
    kafka.add_argument("--data-dir", type=Path, help="log/data directory (kept across restarts)")
    kafka.set_defaults(func=cmd_kafka)

    produce = commands.add_parser("produce", help="send impression/click events to the events topic")
    produce.add_argument("--source", choices=["synthetic", "movielens"], default="synthetic")
    produce.add_argument("--data", type=Path, help="dataset folder for --source movielens "
                         "(default: the first MovieLens folder found)")
    produce.add_argument("--scenarios-file", type=Path)
    produce.add_argument("--limit", type=int, help="stop after this many events")
    produce.add_argument("--rate", type=float, help="events per second (default: as fast as possible)")
    produce.add_argument("--topic", help="default: settings.kafka.events_topic")
    produce.add_argument("--users", type=int, default=10_000, help="synthetic: number of users")
    produce.add_argument("--items", type=int, default=20_000, help="synthetic: number of items")
    produce.add_argument("--events", type=int, default=1_000_000, help="synthetic: stream length")
    produce.add_argument("--seed", type=int, default=0)
    produce.add_argument("--catalog", action="store_true",
                         help="send the source's item catalogue (MovieLens: title, genres, year; synthetic: "
                              "titles, tags, posters) to the items topic instead of events")
    produce.set_defaults(func=cmd_produce)

    readback = commands.add_parser("readback", help="read a topic from the beginning and count what is on it")
    readback.add_argument("--topic")
    readback.set_defaults(func=cmd_readback)

    p = commands.add_parser("ingest", help="consume events into the feature store and the offline history")
    p.add_argument("--processes", type=int, default=1, help="user-stage consumer processes (<= partitions)")
    p.add_argument("--item-shards", type=int, default=None, help="item-stage processes (default: settings)")
    p.add_argument("--online-store", choices=["sqlite", "redis"], default=None)
    p.add_argument("--max-events", type=int, default=None, help="each process stops after this many records")
    p.add_argument("--until-idle", type=float, default=None, help="stop after S seconds without records")
    p.set_defaults(func=cmd_ingest)

    p = commands.add_parser("ingest-catalog", help="consume catalogue events into the offline catalogue "
                            "history (bad ones to the items dead-letter topic)")
    p.add_argument("--until-idle", type=float, default=None, help="stop after S seconds without records")
    p.set_defaults(func=cmd_ingest_catalog)

    b = benches.add_parser("ingest", help="throughput, freshness and exactness of the ingest pipeline")
    b.add_argument("--events", type=int, default=200_000)
    b.add_argument("--consumers", type=int, default=1)
    b.add_argument("--online-store", choices=["sqlite", "redis"], default="redis")
    b.add_argument("--rate", type=float, default=2000.0, help="events/s of the freshness phase")
    b.add_argument("--freshness-seconds", type=float, default=15.0)
    b.set_defaults(func=cmd_bench_ingest)


def _apply_local_overrides(args, settings):
    if getattr(args, "port", None):
        settings.local_kafka.port = args.port
        settings.kafka.bootstrap_servers = f"{settings.local_kafka.host}:{args.port}"
    if getattr(args, "data_dir", None):
        settings.local_kafka.data_dir = args.data_dir.absolute()


def cmd_kafka(args, settings) -> int:
    from cli.local.kafka import BrokerError, LocalKafka
    from streaming.topics import ensure_topics

    _apply_local_overrides(args, settings)
    broker = LocalKafka(settings)
    try:
        if args.action == "start":
            status = broker.start()
            if settings.kafka.bootstrap_servers == broker.bootstrap:
                ensure_topics(settings)
            print(f"kafka {status.version} running on {status.bootstrap} (pid {status.pid}, data {status.data_dir})",
                  file=sys.stderr)
        elif args.action == "stop":
            was = broker.stop()
            print("kafka stopped" if was else "kafka was not running", file=sys.stderr)
            status = broker.status()
        else:
            status = broker.status()
    except BrokerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(status.to_dict()))
    return 0 if (status.running or args.action == "stop") else 3


def open_source(args, settings):
    """The event source named on the command line (MovieLens falls back to synthetic if none is found).
    Both kinds tell their length as ``n_events``."""
    from streaming.sources import MovieLensSource, SyntheticSource

    if args.source == "movielens":
        folder = args.data or settings.data.find_movielens()
        if folder is None:
            print("no MovieLens folder given or found (see `sassflow data fetch`); using the synthetic source",
                  file=sys.stderr)
        else:
            src = MovieLensSource(folder, args.scenarios_file or settings.data.find_scenarios_file(Path(folder)))
            if set(src.scenarios) - set(settings.scenarios):
                raise SystemExit(f"the dataset's scenarios {src.scenarios} are not all in settings.scenarios "
                                 f"{settings.scenarios}; set SASSFLOW_SCENARIOS")
            return src
    return SyntheticSource(n_users=args.users, n_items=args.items, n_events=args.events,
                           scenarios=settings.scenarios, seed=args.seed)


def cmd_produce(args, settings) -> int:
    from streaming.produce import produce_events
    from streaming.topics import ensure_topics

    source = open_source(args, settings)
    if args.catalog:
        return produce_catalog(args, settings, source)
    total = min(args.limit or source.n_events, source.n_events)
    if args.topic is None:
        ensure_topics(settings)
    result = produce_events(settings, source.events(limit=args.limit), topic=args.topic, total=total, rate=args.rate)
    print(f"produced {result.events} events in {result.seconds:.1f}s ({result.eps:,.0f} events/s)", file=sys.stderr)
    print(json.dumps(result.to_dict()))
    return 0


def produce_catalog(args, settings, source) -> int:
    """The source's catalogue on the items topic (key = item id)."""
    from streaming.catalog import ensure_catalog_topics, movielens_catalog, synthetic_catalog
    from streaming.produce import produce_events

    if hasattr(source, "dataset"):
        items, total = movielens_catalog(source.dataset), len(source.dataset.movies)
    else:
        items, total = synthetic_catalog(source), source.n_items
    if args.limit:
        items, total = (it for _, it in zip(range(args.limit), items)), min(total, args.limit)
    if args.topic is None:
        ensure_catalog_topics(settings)
    result = produce_events(settings, items, topic=args.topic or settings.kafka.items_topic, total=total,
                            rate=args.rate)
    print(f"produced {result.events} catalogue items in {result.seconds:.1f}s", file=sys.stderr)
    print(json.dumps(result.to_dict()))
    return 0


def cmd_ingest_catalog(args, settings) -> int:
    from streaming.consumer import run_catalog_stage

    r = run_catalog_stage(settings, until_idle=args.until_idle)
    print(json.dumps({"records": r.records, "applied": r.applied}))
    return 0


def cmd_readback(args, settings) -> int:
    from streaming.produce import read_back

    result = read_back(settings, topic=args.topic)
    print(json.dumps(result.to_dict()))
    return 0


def cmd_ingest(args, settings) -> int:
    from streaming.ingest import run_ingest

    if args.online_store:
        settings.feast.online_store = args.online_store
    return run_ingest(settings, args.processes, args.item_shards, args.max_events, args.until_idle)


def cmd_bench_ingest(args, settings) -> int:
    from cli.bench.ingest import bench_ingest
    from cli.output import emit_json

    emit_json(bench_ingest(settings, args.events, args.consumers, args.online_store, args.rate, args.freshness_seconds))
    return 0
