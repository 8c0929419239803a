"""Put events on the events topic, and read a topic back (the foundation's round trip)."""
from __future__ import annotations

import time
from contextlib import nullcontext
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from sassflow.settings import Settings
from sassflow.contracts.events import Event, EventError, parse_event


def make_producer(settings: Settings, **overrides):
    from kafka import KafkaProducer

    kw = dict(
        acks="all",
        linger_ms=20,
        batch_size=512 * 1024,
        max_request_size=4 * 1024 * 1024,
        retries=10,
        enable_idempotence=True,
    )
    kw.update(overrides)
    return KafkaProducer(**settings.kafka.client_kwargs(), **kw)


def _progress(label: str) -> Progress:
    return Progress(
        TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[eps]:>9.0f} ev/s"), TimeElapsedColumn(),
        transient=False,
    )


@dataclass
class ProduceResult:
    events: int = 0
    seconds: float = 0.0
    by_type: Counter = field(default_factory=Counter)

    @property
    def eps(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0

    def to_dict(self) -> dict:
        return {"events": self.events, "seconds": round(self.seconds, 3), "events_per_s": round(self.eps, 1),
                "by_type": dict(self.by_type)}


def produce_events(settings: Settings, events: Iterable[Event], topic: str | None = None,
                   total: int | None = None, rate: float | None = None, show_progress: bool = True,
                   producer=None) -> ProduceResult:
    """Send events (key = user_id) and wait until the broker has acknowledged all of them.

    ``rate`` (events/s) paces the stream; without it events go as fast as the client can.
    """
    topic = topic or settings.kafka.events_topic
    own = producer is None
    producer = producer or make_producer(settings)
    result = ProduceResult()
    failures: list[BaseException] = []
    t0 = time.perf_counter()
    progress = _progress(f"produce → {topic}")
    try:
        with progress if show_progress else nullcontext():
            task = progress.add_task("produce", total=total, eps=0.0) if show_progress else None
            for n, event in enumerate(events, 1):
                if rate:
                    ahead = n / rate - (time.perf_counter() - t0)
                    if ahead > 0:
                        time.sleep(ahead)
                producer.send(topic, key=event.key(), value=event.to_bytes()).add_errback(failures.append)
                result.by_type[event.event_type] += 1
                result.events = n
                if show_progress and n % 5000 == 0:
                    progress.update(task, completed=n, eps=n / (time.perf_counter() - t0))
            producer.flush()
            result.seconds = time.perf_counter() - t0
            if show_progress:
                progress.update(task, completed=result.events, eps=result.eps)
    finally:
        if own:
            producer.close()
    if failures:
        raise RuntimeError(f"{len(failures)} events were not acknowledged by the broker: {failures[0]!r}")
    return result


@dataclass
class ReadbackResult:
    messages: int = 0
    valid: int = 0
    distinct_event_ids: int = 0
    invalid: Counter = field(default_factory=Counter)
    by_scenario_type: Counter = field(default_factory=Counter)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {
            "messages": self.messages, "valid": self.valid, "distinct_event_ids": self.distinct_event_ids,
            "invalid": dict(self.invalid),
            "by_scenario": {f"{s}/{t}": n for (s, t), n in sorted(self.by_scenario_type.items())},
            "seconds": round(self.seconds, 3),
        }


def read_back(settings: Settings, topic: str | None = None, show_progress: bool = True,
              timeout_s: float = 120.0) -> ReadbackResult:
    """Read a topic from its beginning to the end offsets seen at the start, validating every message.

    Uses manual assignment (no consumer group), so it changes no committed offsets.
    """
    from kafka import KafkaConsumer, TopicPartition

    topic = topic or settings.kafka.events_topic
    consumer = KafkaConsumer(**settings.kafka.client_kwargs(), enable_auto_commit=False,
                             max_partition_fetch_bytes=8 * 1024 * 1024, fetch_max_bytes=64 * 1024 * 1024)
    result = ReadbackResult()
    seen: set[str] = set()
    scenarios = set(settings.scenarios)
    t0 = time.perf_counter()
    try:
        partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            raise RuntimeError(f"topic {topic!r} does not exist")
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        end = consumer.end_offsets(tps)
        begin = consumer.beginning_offsets(tps)
        total = sum(end[tp] - begin[tp] for tp in tps)
        remaining = {tp for tp in tps if end[tp] > begin[tp]}
        progress = _progress(f"read back ← {topic}")
        with progress if show_progress else nullcontext():
            task = progress.add_task("read", total=total, eps=0.0) if show_progress else None
            deadline = time.monotonic() + timeout_s
            while remaining:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"read {result.messages} of {total} messages within {timeout_s}s")
                for tp, records in consumer.poll(timeout_ms=500, max_records=50_000).items():
                    for rec in records:
                        if rec.offset >= end[tp]:
                            continue
                        result.messages += 1
                        try:
                            e = parse_event(rec.value, scenarios, settings.kafka.max_event_bytes)
                        except EventError as exc:
                            result.invalid[exc.reason] += 1
                            continue
                        result.valid += 1
                        seen.add(e.event_id)
                        result.by_scenario_type[(e.scenario, e.event_type)] += 1
                    if consumer.position(tp) >= end[tp]:
                        remaining.discard(tp)
                if show_progress:
                    progress.update(task, completed=result.messages,
                                    eps=result.messages / max(time.perf_counter() - t0, 1e-9))
    finally:
        consumer.close()
    result.distinct_event_ids = len(seen)
    result.seconds = time.perf_counter() - t0
    return result
