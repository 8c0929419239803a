"""Running the ingest: user-stage and item-stage consumer processes, spawned (never forked)."""
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
                 until_idle: float | None = None, results=None, stages: tuple[str, ...] | None = None) -> list:
    """Start ``processes`` user-stage consumers (one group), ``item_shards`` (default: settings)
    item-stage consumers and, when ``recall.stream`` is on, the recall stage, as separate OS
    processes (spawn, never fork). ``stages`` limits the start to some of them (each stage is its
    own consumer group, so the others can run later over the same topic)."""
    import multiprocessing as mp

    stages = stages or ("user", "item", "recall")
    shards = item_shards or settings.streaming.item_shards
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_stage_main, args=(settings, "user", 0, 1, i, max_events, until_idle, results))
             for i in range(processes if "user" in stages else 0)]
    procs += [ctx.Process(target=_stage_main, args=(settings, "item", k, shards, processes + k, max_events, until_idle,
                                                    results))
              for k in range(shards if "item" in stages else 0)]
    if settings.recall.stream and "recall" in stages:
        procs.append(ctx.Process(target=_stage_main, args=(settings, "recall", 0, 1, processes + shards, max_events,
                                                            until_idle, results)))
    for p in procs:
        p.start()
    return procs


def run_ingest(settings, processes: int = 1, item_shards: int | None = None, max_events: int | None = None,
               until_idle: float | None = None) -> int:
    """Run the ingest consumers (``spawn_stages``); forward SIGTERM; wait for all."""
    from features.store import apply_definitions
    from streaming.topics import ensure_topics

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


def consumer_lag(settings) -> dict:
    """Messages not yet committed by each ingest consumer group (user stage, item shards), summed over
    partitions: 0 means the consumers have applied and committed everything on the topic."""
    from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

    from streaming.recall_stage import recall_group
    from streaming.stages import item_group

    topic = settings.kafka.events_topic
    shards = settings.streaming.item_shards
    groups = [settings.kafka.consumer_group] + [item_group(settings, k, shards) for k in range(shards)]
    groups += [recall_group(settings)] if settings.recall.stream else []
    admin = KafkaAdminClient(**settings.kafka.client_kwargs())
    consumer = KafkaConsumer(**settings.kafka.client_kwargs())
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        end = consumer.end_offsets(tps)
        committed = admin.list_group_offsets({group: tps for group in groups})
        return {group: sum(end[tp] - (offsets[tp].offset if tp in offsets and offsets[tp].offset >= 0 else 0)
                           for tp in tps)
                for group, offsets in committed.items()}
    finally:
        consumer.close()
        admin.close()
