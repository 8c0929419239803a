"""`sassflow demo`: the main job, end to end on embedded defaults.

Stages run in order and each one reports into the summary; a stage whose part
of the product is not installed is reported as skipped with the reason.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def register(commands, benches) -> None:
    demo = commands.add_parser("demo", help="run the whole loop end to end on embedded defaults")
    demo.add_argument("--source", choices=["movielens", "synthetic"], default="movielens",
                      help="movielens falls back to synthetic when no dataset folder is found")
    demo.add_argument("--data", type=Path, help="MovieLens-format dataset folder")
    demo.add_argument("--scenarios-file", type=Path)
    demo.add_argument("--limit", type=int, help="events to replay (default: all; --quick: 100000)")
    demo.add_argument("--quick", action="store_true", help="a small run (about 3 minutes)")
    demo.add_argument("--keep-kafka", action="store_true", help="leave the broker running afterwards")
    demo.add_argument("--users", type=int, default=5000)
    demo.add_argument("--items", type=int, default=10000)
    demo.add_argument("--events", type=int, default=1_000_000)
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=cmd_demo)


def _stage(name: str) -> None:
    print(f"\n=== {name}", file=sys.stderr, flush=True)


def cmd_demo(args, settings) -> int:
    from streaming.broker import LocalKafka, ensure_topics
    from streaming.cli import open_source
    from streaming.produce import produce_events, read_back

    if args.quick and args.limit is None:
        args.limit = 100_000
    summary: dict = {"state_dir": str(settings.state_dir)}
    t_start = time.perf_counter()
    broker = LocalKafka(settings)
    local = settings.kafka.bootstrap_servers == broker.bootstrap
    try:
        if local:
            _stage("start local Kafka")
            status = broker.start()
            summary["kafka"] = status.to_dict()
        ensure_topics(settings)

        _stage("replay events into Kafka")
        source, total = open_source(args, settings)
        summary["source"] = type(source).__name__
        topic_before = _topic_size(settings)
        produced = produce_events(settings, source.events(limit=args.limit), total=total or args.limit)
        summary["produced"] = produced.to_dict()

        _stage("read the topic back")
        back = read_back(settings)
        summary["readback"] = back.to_dict()
        summary["readback"]["new_messages"] = back.messages - topic_before
        ok = back.messages - topic_before == produced.events and back.valid == back.messages
        summary["ok"] = ok
    finally:
        if local and not args.keep_kafka:
            broker.stop()
    summary["wall_s"] = round(time.perf_counter() - t_start, 1)
    print(json.dumps(summary))
    return 0 if summary.get("ok") else 1


def _topic_size(settings) -> int:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(**settings.kafka.client_kwargs())
    try:
        parts = consumer.partitions_for_topic(settings.kafka.events_topic) or set()
        tps = [TopicPartition(settings.kafka.events_topic, p) for p in parts]
        if not tps:
            return 0
        end, begin = consumer.end_offsets(tps), consumer.beginning_offsets(tps)
        return sum(end[tp] - begin[tp] for tp in tps)
    finally:
        consumer.close()
