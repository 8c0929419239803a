"""The Kafka side of a stage's state: the changelog topic (records: ``streaming.state``), written in
transactions, and read back by a new owner before it processes anything.

State owners and transactions.  Each state owner -- a user-stage input partition, an item-stage
shard -- has one changelog partition and one transactional producer, whose transactional id is
``<changelog topic>-<changelog partition>``: the same on every host.  A new owner opens it first
(``init_transactions``): the broker fences the previous owner's producer (a zombie's next commit
fails with ``ProducerFencedError``) and aborts its open transaction at once, so a host killed in
the middle of a commit holds nothing up.  Each commit is one transaction: the owner's state
changes since its last commit, its input position, and the input offsets sent to the consumer
group (``send_offsets_to_transaction``) -- both become visible together or not at all.  (One
producer per process with the group's generation as the fence, the other Kafka Streams design,
leaves a killed host's open transaction in place until ``transaction.timeout.ms`` and cannot
fence the item shards, which are not group members.)

Restoring.  A new owner, with its producer open, reads the changelog partition's last stable
offset, asks ``state.plan_restore`` what its local checkpoint is worth, and reads the rest of the
partition with ``isolation_level=read_committed`` (aborted transactions are skipped) up to that
offset, a poll at a time, so the poll loop keeps serving the partitions it already has.  Restore
time and records are metrics (``sassflow_ingest_restore_seconds``, ``..._restored_records_total``)
and a log line, shown at the default verbosity.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field

from streaming import metrics
from streaming.kafka_internals import close_producer, producer_fenced, transaction_step
from streaming.state import CheckpointStore, RestorePlan, plan_restore
from streaming.topics import CHANGELOG_TOMBSTONE_RETENTION_MS

log = logging.getLogger("sassflow.ingest.restore")
if log.level == logging.NOTSET:
    log.setLevel(logging.INFO)  # a restore is rare and worth a line: shown unless configured otherwise


class Fenced(Exception):
    """Another process has opened this state owner's producer: the owner has moved away."""


def input_offsets(topic: str, offsets: dict[int, int]) -> dict:
    from kafka import TopicPartition
    from kafka.structs import OffsetAndMetadata

    return {TopicPartition(topic, p): OffsetAndMetadata(o, "", -1) for p, o in offsets.items()}


class StateWriter:
    """The transactional producer of one state owner (see the module docstring)."""

    def __init__(self, settings, topic: str, partition: int, stage: str):
        self.s, self.topic, self.partition, self.stage = settings, topic, partition, stage
        self.unsent: dict[str, str | None] = {}  # changelog key -> value of the next transaction
        self.producer = self._open()

    def _open(self):
        from kafka import KafkaProducer

        producer = KafkaProducer(
            **self.s.kafka.client_kwargs(), transactional_id=f"{self.topic}-{self.partition}",
            # JSON state compresses ~4x with zstd (~2.5x with lz4), and kafka-python checksums the
            # compressed bytes in pure Python: fewer bytes, less time
            compression_type="zstd",
            linger_ms=0, batch_size=512 * 1024)  # commit_transaction flushes: a transaction's records go at once
        try:
            producer.init_transactions()
        except BaseException:
            close_producer(producer, 5)
            raise
        return producer

    def add(self, records) -> None:
        """Records for the next transaction (a later value of a key replaces an unsent one)."""
        self.unsent.update(records)

    def commit(self, input_topic: str, offsets: dict[int, int], group: str) -> int:
        """One transaction: the unsent records and the input ``offsets`` of ``group``.  Returns the
        changelog partition's end offset after it (its last record + 1 + the commit marker).  Raises
        ``Fenced`` when the owner has moved; any other failure aborts and re-raises (retry the commit)."""
        from kafka.errors import ProducerFencedError

        p, timeout = self.producer, self.s.streaming.transaction_timeout_s
        try:
            p.begin_transaction()
            futures = [p.send(self.topic, key=k.encode(), value=None if v is None else v.encode(),
                              partition=self.partition) for k, v in self.unsent.items()]
            transaction_step(p, "send_offsets", timeout, input_offsets(input_topic, offsets), group)
            transaction_step(p, "commit", timeout)
            end = futures[-1].get(timeout=0).offset + 2
        except Exception as exc:
            if isinstance(exc, ProducerFencedError) or producer_fenced(p):
                raise Fenced(f"{self.topic}[{self.partition}]: {exc}") from exc
            self._recover()
            raise
        metrics.CHANGELOG_RECORDS.labels(self.stage).inc(len(self.unsent))
        self.unsent.clear()
        return end

    def _recover(self) -> None:
        """After a failed transaction (not a fencing): abort it, or when the producer cannot, open a
        new one (as the owner, which the consumer group still says it is)."""
        try:
            transaction_step(self.producer, "abort", self.s.streaming.transaction_timeout_s)
        except Exception as exc:  # noqa: BLE001 -- any failure to abort: start over with a new producer
            if producer_fenced(self.producer):
                raise Fenced(f"{self.topic}[{self.partition}]: {exc}") from exc
            log.warning("%s[%d]: abort failed (%s: %s); reopening the producer", self.topic, self.partition,
                        type(exc).__name__, exc)
            close_producer(self.producer, 5)
            self.producer = self._open()

    def close(self) -> None:
        close_producer(self.producer, 5)


@dataclass
class Restore:
    """A state owner being brought up to date from its changelog partition."""

    partition: int  # changelog partition (= the state owner)
    generation: int  # the assignment it serves: a newer assignment of the owner starts over
    writer: StateWriter
    plan: RestorePlan
    position: int  # next changelog offset to read
    end: int  # last stable offset when the restore began (the previous owner fenced)
    started: float  # perf_counter
    records: int = 0
    state: object = None  # the stage's state built from the image, once complete
    resumes_at: dict = field(default_factory=dict)  # input partition -> offset, once installed

    @property
    def done(self) -> bool:
        return self.position >= self.end

    @property
    def image(self):
        return self.plan.image


class Restorer:
    """Restores of one stage process: opens the owners' producers, plans from the local checkpoints,
    reads the changelog partitions (one read_committed consumer)."""

    def __init__(self, settings, topic: str, stage: str, cache: CheckpointStore):
        self.s, self.topic, self.stage, self.cache = settings, topic, stage, cache
        self._consumer = None
        self._assigned: frozenset = frozenset()
        self.restoring: dict[int, Restore] = {}  # changelog partition -> restore in progress

    def step(self, wanted: dict[int, int], cache_name) -> list[Restore]:
        """Bring the restores in line with ``wanted`` (changelog partition -> assignment generation):
        drop those no longer wanted or of an older assignment, begin the new ones (``cache_name(p)``:
        the owner's local checkpoint), read once.  Returns the restores that are complete."""
        for p, r in list(self.restoring.items()):
            if wanted.get(p) != r.generation:
                self.restoring.pop(p).writer.close()
        new = {p: generation for p, generation in wanted.items() if p not in self.restoring}
        try:
            if new:
                self.restoring.update({r.partition: r for r in self.begin(new, cache_name)})
            self.read(list(self.restoring.values()))
        except Exception:
            self._drop_consumer()  # the pinned client can keep failing on metadata from before a broker failure
            raise
        return [self.restoring.pop(p) for p in [p for p, r in self.restoring.items() if r.done]]

    @property
    def consumer(self):
        if self._consumer is None:
            from kafka import KafkaConsumer

            self._consumer = KafkaConsumer(
                **self.s.kafka.client_kwargs(), group_id=None, enable_auto_commit=False,
                isolation_level="read_committed", check_crcs=self.s.streaming.check_crcs,
                auto_offset_reset="earliest",  # from the log start if retention (not compaction) removed the start
                max_poll_records=20_000, fetch_max_bytes=16 * 1024 * 1024, max_partition_fetch_bytes=4 * 1024 * 1024)
        return self._consumer

    def begin(self, owners: dict[int, int], cache_name) -> list[Restore]:
        """Open the owners' producers (fencing the previous owners), then read their changelogs' ends
        and plan from their local checkpoints."""
        from kafka import TopicPartition

        started = time.perf_counter()
        writers = self._open_writers(list(owners))
        try:
            tps = {p: TopicPartition(self.topic, p) for p in owners}
            timeout_ms = self.s.streaming.transaction_timeout_s * 1000  # then a fresh reader tries (``step``)
            ends = self.consumer.end_offsets(list(tps.values()), timeout_ms=timeout_ms)
            now = int(time.time() * 1000)
            plans = {p: plan_restore(self.cache.load(cache_name(p)), ends[tps[p]], now,
                                     CHANGELOG_TOMBSTONE_RETENTION_MS) for p in owners}
        except BaseException:
            for w in writers.values():
                w.close()
            raise
        return [Restore(p, g, writers[p], plans[p], plans[p].start, ends[tps[p]], started) for p, g in owners.items()]

    def _open_writers(self, owners: list[int]) -> dict[int, StateWriter]:
        """The owners' producers, opened concurrently (each takes a few round trips): all or none."""
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(len(owners)) as pool:
            opening = {p: pool.submit(StateWriter, self.s, self.topic, p, self.stage) for p in owners}
        failures = [f.exception() for f in opening.values() if f.exception() is not None]
        if failures:
            for f in opening.values():
                if f.exception() is None:
                    f.result().close()
            raise failures[0]
        return {p: f.result() for p, f in opening.items()}

    def read(self, restores: list[Restore], timeout_ms: int = 50) -> None:
        """One poll of the changelog for the unfinished ``restores``: apply what it returns."""
        from kafka import TopicPartition

        todo = {TopicPartition(self.topic, r.partition): r for r in restores if not r.done}
        if not todo:
            return
        if frozenset(todo) != self._assigned:
            self.consumer.assign(list(todo))
            for tp, r in todo.items():
                self.consumer.seek(tp, r.position)
            self._assigned = frozenset(todo)
        for tp, records in self.consumer.poll(timeout_ms=timeout_ms).items():
            r = todo[tp]
            for rec in records:
                if rec.offset < r.end:
                    r.image.apply(rec.key, rec.value)
                    r.records += 1
        for tp, r in todo.items():
            r.position = max(r.position, self.consumer.position(tp))

    def finished(self, r: Restore, resumes_at: dict[int, int]) -> float:
        """Report a restore installed, its input resuming at ``resumes_at`` (metric + log line);
        returns its duration."""
        r.resumes_at = resumes_at
        seconds = time.perf_counter() - r.started
        metrics.RESTORE_SECONDS.labels(self.stage, r.plan.source).observe(seconds)
        metrics.RESTORED_RECORDS.labels(self.stage).inc(r.records)
        log.info("%s state of %s[%d] restored from %s in %.3fs: %d changelog records (offsets %d..%d); "
                 "input resumes at %s", self.stage, self.topic, r.partition, r.plan.source, seconds, r.records,
                 r.plan.start, r.end, json.dumps(resumes_at))
        return seconds

    def close(self) -> None:
        for r in self.restoring.values():
            r.writer.close()
        self.restoring.clear()
        self._drop_consumer()

    def _drop_consumer(self) -> None:
        """Close the reading consumer; the next read opens a new one (and seeks every restore again)."""
        if self._consumer is not None:
            try:
                self._consumer.close()
            except Exception as exc:  # noqa: BLE001 -- closing is best effort: the next one starts afresh
                log.info("closing the changelog reader: %s", exc)
            self._consumer, self._assigned = None, frozenset()
