"""The ingest consumers: Kafka records in, features in the online store, history on disk.

Two stages share one loop (``run_stage``), which is the only place that touches offsets:

* **user stage** -- consumer group ``kafka.consumer_group`` on the events topic (keyed by user,
  so one partition owns every key of its users).  Validates each record, dead-letters the bad
  ones (original bytes + ``reason``/``error``/source headers), applies valid events to the
  per-partition ``UserFeatures``, writes ``user_scenario_stats`` and ``user_profile`` rows, and
  appends the events to the offline history.
* **item stage** -- items are touched from every partition, so item shard k of K reads *all*
  partitions of the events topic (manual assignment, no group membership: one owner per shard
  by construction) and keeps the items with ``item_id % K == k``.  Reading the topic twice costs
  less than re-producing every event to a repartition topic, and the shard's checkpoint holds
  the next offset of every partition, so nothing is applied twice.

Exactness.  Each micro-batch: poll -> aggregate -> write absolute rows to the online store (with
retry).  Every ``checkpoint_interval_ms``, in this order: DLQ producer flushed -> history
appended (idempotent, see ``streaming.history``) -> window state + the offsets it covers saved
atomically (``streaming.state``) -> offsets committed.  On assignment the state is restored and
the partition is sought to the checkpointed offset (the beginning when there is none), so a
crash replays exactly the records after the checkpoint onto exactly the state before them;
the online rows it rewrites are absolute, and the same.  The committed Kafka offsets are kept
for lag monitoring; the checkpoint is the source of truth.  A record below a partition's next
offset is skipped, so a stale fetch after a rebalance cannot be applied twice.

Dead letters are exact across crashes too: at the first bad record after an assignment the DLQ
is scanned once for records already dead-lettered from this partition at or after that offset
(a replay after a crash), and those are not sent again.

Rebalances: ``on_partitions_revoked`` flushes and checkpoints the revoked partitions and commits
them (``commit_async``, as kafka-python 3 forbids a blocking commit inside a listener).
kafka-python 3 runs listeners on its IO thread: a lock serialises them with the processing loop,
and the loop commits outside that lock (a commit waits for the IO thread).
SIGTERM/SIGINT: finish the batch, flush, checkpoint, commit, leave the group.  Store or broker
outage: the failing step is retried with exponential backoff; nothing is committed meanwhile.
"""
from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass, field

from streaming import metrics
from streaming.aggregate import ItemFeatures, UserFeatures, ev_from_fields
from streaming.events import EventError, parse_event_fields
from streaming.history import COLUMNS, append_history, high_water, segment_name
from streaming.state import CheckpointStore, checkpoint_root

log = logging.getLogger("sassflow.ingest")


class Stopping(Exception):
    """Raised out of a retry loop when shutdown is requested during an outage (nothing committed)."""


class Shutdown:
    def __init__(self):
        self.flag = threading.Event()

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.flag.set())


def retry(fn, operation: str, shutdown: Shutdown, max_backoff: float = 5.0):
    """Run fn until it succeeds; back off exponentially; give up only on shutdown."""
    delay = 0.1
    while True:
        try:
            return fn()
        except Stopping:
            raise
        except Exception as exc:  # noqa: BLE001 -- any store/broker failure is retried
            metrics.RETRIES.labels(operation).inc()
            log.warning("%s failed (%s: %s); retrying in %.1fs", operation, type(exc).__name__, exc, delay)
            if shutdown.flag.wait(delay):
                raise Stopping(operation) from exc
            delay = min(delay * 2, max_backoff)


def _event_row(d: dict, partition: int, offset: int) -> tuple:
    """One history row, in ``streaming.history.COLUMNS`` order."""
    return (d["event_id"], d["user_id"], d["item_id"], d["scenario"], d["event_type"], d["event_time"],
            d.get("dwell_ms"), partition, offset)


def item_group(settings, shard: int, shards: int) -> str:
    """The consumer group of one item-stage shard (its committed offsets show its lag)."""
    return f"{settings.kafka.consumer_group}.items.{shard}of{shards}"


@dataclass
class UserPartition:
    next_offset: int
    watermark: int
    features: UserFeatures
    history_hw: int
    dead_lettered: set | None = None  # offsets already in the DLQ (replay guard), scanned lazily
    pending: list = field(default_factory=list)  # history rows not yet on disk
    touched: set = field(default_factory=set)


class UserStage:
    name = "user"

    def __init__(self, settings, writer, producer):
        self.s = settings
        self.topic = settings.kafka.events_topic
        self.group = settings.kafka.consumer_group
        self.writer = writer
        self.producer = producer
        self.ckpt = CheckpointStore(checkpoint_root(settings, self.group, self.topic))
        self.parts: dict[int, UserPartition] = {}
        self.scenarios = set(settings.scenarios)

    # -- ownership -------------------------------------------------------------------------
    def assign(self, partitions: list[int]) -> dict[int, int]:
        seeks = {}
        for p in partitions:
            if p in self.parts:
                seeks[p] = self.parts[p].next_offset
                continue
            saved = self.ckpt.load(f"p{p}") or {"next_offset": 0, "watermark": 0, "state": {}}
            users = UserFeatures(self.s.scenarios)
            users.load_json(saved["state"])
            part = UserPartition(saved["next_offset"], saved["watermark"], users,
                                 high_water(self.s.streaming.offline_dir, self.topic, p))
            self.parts[p] = part
            seeks[p] = part.next_offset
        return seeks

    def revoke(self, partitions: list[int]) -> None:
        for p in partitions:
            self.parts.pop(p, None)

    def _already_dead_lettered(self, partition: int, from_offset: int) -> set:
        from kafka import KafkaConsumer, TopicPartition

        dlq = self.s.kafka.dlq_topic
        c = KafkaConsumer(**self.s.kafka.client_kwargs(), enable_auto_commit=False, group_id=None)
        try:
            parts = c.partitions_for_topic(dlq) or set()
            tps = [TopicPartition(dlq, q) for q in parts]
            if not tps:
                return set()
            c.assign(tps)
            c.seek_to_beginning(*tps)
            end = c.end_offsets(tps)
            done, found = set(), set()
            deadline = time.monotonic() + 60
            while len(done) < len(tps) and time.monotonic() < deadline:
                for tp in tps:
                    if c.position(tp) >= end[tp]:
                        done.add(tp)
                for recs in c.poll(timeout_ms=200).values():
                    for r in recs:
                        h = dict(r.headers or [])
                        if (h.get("source_topic") == self.topic.encode()
                                and int(h.get("source_partition", b"-1")) == partition
                                and int(h.get("source_offset", b"-1")) >= from_offset):
                            found.add(int(h["source_offset"]))
            return found
        finally:
            c.close()

    # -- processing ------------------------------------------------------------------------
    def process(self, partition: int, records) -> int:
        part = self.parts.get(partition)
        if part is None:
            return 0
        applied = 0
        lateness = self.s.streaming.allowed_lateness_ms
        max_bytes = self.s.kafka.max_event_bytes
        for r in records:
            if r.offset < part.next_offset:
                continue  # already applied (stale fetch across a rebalance)
            part.next_offset = r.offset + 1
            try:
                d = parse_event_fields(r.value, self.scenarios, max_bytes)  # a dict: no pydantic object per event
            except EventError as err:
                if part.dead_lettered is None:  # first bad record since assignment
                    part.dead_lettered = self._already_dead_lettered(partition, r.offset)
                if r.offset not in part.dead_lettered:
                    self._dead_letter(r, err)
                continue
            ev = ev_from_fields(d)
            if ev.event_time < part.watermark - lateness:
                metrics.LATE.inc()
            elif ev.event_time > part.watermark:
                part.watermark = ev.event_time
            part.features.add(ev)
            part.touched.add((ev.user_id, ev.scenario))
            if r.offset > part.history_hw:
                part.pending.append(_event_row(d, partition, r.offset))
            applied += 1
        return applied

    def _dead_letter(self, r, err: EventError) -> None:
        headers = [("reason", err.reason.encode()), ("error", err.message.encode()[:1000]),
                   ("source_topic", self.topic.encode()), ("source_partition", str(r.partition).encode()),
                   ("source_offset", str(r.offset).encode())]
        self.producer.send(self.s.kafka.dlq_topic, key=r.key, value=r.value if r.value is not None else b"",
                           headers=headers)
        metrics.DEAD_LETTERED.labels(err.reason).inc()

    def write_online(self) -> None:
        for part in self.parts.values():
            if not part.touched:
                continue
            scen, prof = part.features.rows(part.touched)
            self.writer.write("user_scenario_stats", [({"user_id": u, "scenario": s}, f, t) for u, s, f, t in scen])
            self.writer.write("user_profile", [({"user_id": u}, f, t) for u, f, t in prof])
            part.touched.clear()

    def checkpoint(self, partitions=None) -> dict[int, int]:
        """History -> checkpoint for the given (default: all owned) partitions; returns offsets to commit."""
        self.producer.flush()
        offsets = {}
        for p in sorted(self.parts if partitions is None else partitions):
            part = self.parts.get(p)
            if part is None:
                continue
            if part.pending:
                import pandas as pd

                rows = part.pending
                first, last = rows[0][-1], rows[-1][-1]  # kafka offsets
                append_history(self.s.streaming.offline_dir, pd.DataFrame.from_records(rows, columns=COLUMNS),
                               name=segment_name(self.topic, p, first, last))
                part.history_hw = last
                part.pending = []
            self.ckpt.save(f"p{p}", {"topic": self.topic, "partition": p, "next_offset": part.next_offset,
                                     "watermark": part.watermark}, part.features.snapshot.text())
            offsets[p] = part.next_offset
        return offsets


class ItemStage:
    name = "item"

    def __init__(self, settings, writer, shard: int, shards: int):
        self.s = settings
        self.topic = settings.kafka.events_topic
        self.shard, self.shards = shard, shards
        self.group = item_group(settings, shard, shards)
        self.writer = writer
        self.ckpt = CheckpointStore(checkpoint_root(settings, self.group, self.topic))
        saved = self.ckpt.load("state") or {"offsets": {}, "state": {}}
        self.next_offset = {int(p): o for p, o in saved["offsets"].items()}
        self.features = ItemFeatures()
        self.features.load_json(saved["state"])
        self.touched: set = set()
        self.scenarios = set(settings.scenarios)

    def assign(self, partitions: list[int]) -> dict[int, int]:
        for p in partitions:
            self.next_offset.setdefault(p, 0)
        return {p: self.next_offset[p] for p in partitions}

    def revoke(self, partitions) -> None:
        pass

    def process(self, partition: int, records) -> int:
        applied = 0
        nxt = self.next_offset.get(partition, 0)
        for r in records:
            if r.offset < nxt:
                continue
            nxt = r.offset + 1
            try:
                d = parse_event_fields(r.value, self.scenarios, self.s.kafka.max_event_bytes)
            except EventError:
                continue  # the user stage dead-letters it
            if d["item_id"] % self.shards != self.shard:
                continue
            ev = ev_from_fields(d)
            self.features.add(ev)
            self.touched.add((ev.item_id, ev.scenario))
            applied += 1
        self.next_offset[partition] = nxt
        return applied

    def write_online(self) -> None:
        if self.touched:
            rows = self.features.rows(self.touched)
            self.writer.write("item_scenario_stats", [({"item_id": i, "scenario": s}, f, t) for i, s, f, t in rows])
            self.touched.clear()

    def checkpoint(self, partitions=None) -> dict[int, int]:
        self.ckpt.save("state", {"topic": self.topic, "offsets": {str(p): o for p, o in self.next_offset.items()}},
                       self.features.snapshot.text())
        return dict(self.next_offset)


def _make_listener(consumer, stage, lock, shutdown):
    from kafka import AsyncConsumerRebalanceListener, TopicPartition
    from kafka.structs import OffsetAndMetadata

    topic = stage.topic

    class Listener(AsyncConsumerRebalanceListener):
        async def on_partitions_revoked(self, revoked):
            parts = sorted(tp.partition for tp in revoked if tp.topic == topic)
            if not parts:
                return
            with lock:
                try:
                    retry(stage.write_online, "online write", shutdown)
                    offsets = retry(lambda: stage.checkpoint(parts), "checkpoint", shutdown)
                except Stopping:
                    stage.revoke(parts)
                    return
                consumer.commit_async({TopicPartition(topic, p): OffsetAndMetadata(o, "", -1)
                                       for p, o in offsets.items()})
                stage.revoke(parts)
            log.info("revoked %s", parts)

        async def on_partitions_assigned(self, assigned):
            parts = sorted(tp.partition for tp in assigned if tp.topic == topic)
            with lock:
                seeks = stage.assign(parts)
                for p, o in seeks.items():
                    consumer.seek(TopicPartition(topic, p), o)
            log.info("assigned %s at %s", parts, seeks)

    return Listener()


@dataclass
class RunResult:
    records: int = 0
    applied: int = 0
    first_record_at: float | None = None  # wall clock of the first non-empty poll
    last_flush_at: float | None = None  # wall clock after the last batch with records was written


def run_stage(settings, stage_name: str = "user", shard: int = 0, shards: int = 1, index: int = 0,
              max_events: int | None = None, until_idle: float | None = None,
              install_signals: bool = True, shutdown: Shutdown | None = None) -> RunResult:
    """Run one consumer process of one stage until SIGTERM, ``max_events`` records, or
    ``until_idle`` seconds without a record."""
    from kafka import KafkaConsumer, TopicPartition
    from kafka.errors import CommitFailedError
    from kafka.structs import OffsetAndMetadata

    from features.store import OnlineWriter, apply_definitions, build_store

    shutdown = shutdown or Shutdown()
    if install_signals:
        shutdown.install()
    port = settings.streaming.metrics_port
    metrics.serve(port + index if port else 0)
    sset = settings.streaming
    store = build_store(settings)
    if not store.list_feature_views():
        apply_definitions(settings, store)
    writer = OnlineWriter(store)
    topic = settings.kafka.events_topic
    lock = threading.RLock()
    if stage_name == "user":
        from streaming.produce import make_producer

        producer = make_producer(settings, linger_ms=5)
        stage = UserStage(settings, writer, producer)
    else:
        producer = None
        stage = ItemStage(settings, writer, shard, shards)
    consumer = KafkaConsumer(
        **settings.kafka.client_kwargs(), group_id=stage.group, enable_auto_commit=False,
        auto_offset_reset="earliest", max_poll_records=sset.batch_max_events,
        session_timeout_ms=6_000, heartbeat_interval_ms=1_500,  # a dead member's partitions move fast
        fetch_max_bytes=16 * 1024 * 1024, max_partition_fetch_bytes=4 * 1024 * 1024,
        # kafka-python verifies CRC32C in pure Python: ~70% of its per-record decoding time.  See
        # settings.streaming.check_crcs for why skipping it on the client is safe by default.
        check_crcs=sset.check_crcs,
    )
    if stage_name == "user":
        consumer.subscribe([topic], listener=_make_listener(consumer, stage, lock, shutdown))
    else:
        parts = sorted(retry(lambda: consumer.partitions_for_topic(topic) or _raise("no topic " + topic),
                             "topic metadata", shutdown))
        consumer.assign([TopicPartition(topic, p) for p in parts])
        for p, o in stage.assign(parts).items():
            consumer.seek(TopicPartition(topic, p), o)

    # long-lived window state is millions of small objects: move what exists out of the cyclic
    # GC's view and collect young objects less often (full collections stalled micro-batches)
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    result = RunResult()
    last_ckpt = time.monotonic()
    idle_since = None  # start of the current run of empty polls (an outage retry is not idleness)
    oldest_pending_ts: list[int] = []

    def commit(offsets):
        if not offsets:
            return
        try:
            consumer.commit({TopicPartition(topic, p): OffsetAndMetadata(o, "", -1) for p, o in offsets.items()})
        except CommitFailedError as exc:  # rebalanced meanwhile: the checkpoint stays authoritative
            log.info("commit skipped: %s", exc)

    try:
        while not shutdown.flag.is_set():
            # one micro-batch: records polled until batch_max_ms has passed or batch_max_events
            # arrived, then one online write of every key they touched
            t_start = time.monotonic()
            applied_before = result.applied
            n = 0
            t0 = time.perf_counter()
            while n < sset.batch_max_events and not shutdown.flag.is_set():
                left_ms = sset.batch_max_ms - (time.monotonic() - t_start) * 1000
                if left_ms <= 0:
                    break
                batch = consumer.poll(timeout_ms=int(left_ms), max_records=sset.batch_max_events - n)
                if not batch:
                    break
                with lock:
                    for tp, records in sorted(batch.items(), key=lambda kv: kv[0].partition):
                        if tp.topic != topic or not records:
                            continue
                        n += len(records)
                        result.applied += stage.process(tp.partition, records)
                        oldest_pending_ts.append(records[0].timestamp)
            now = time.monotonic()
            with lock:
                if n:
                    if result.first_record_at is None:
                        result.first_record_at = time.time() - (now - t_start)
                    result.records += n
                    idle_since = None
                    metrics.EVENTS_IN.labels(stage.name).inc(n)
                    metrics.APPLIED.labels(stage.name).inc(result.applied - applied_before)
                    retry(stage.write_online, "online write", shutdown)
                    wall_ms = time.time() * 1000
                    for ts in oldest_pending_ts:
                        metrics.FRESHNESS_SECONDS.labels(stage.name).observe(max(0.0, (wall_ms - ts) / 1000))
                    oldest_pending_ts.clear()
                    metrics.BATCH_SECONDS.labels(stage.name).observe(time.perf_counter() - t0)
                    result.last_flush_at = time.time()
                elif idle_since is None:
                    idle_since = now
                done = (max_events is not None and result.records >= max_events) or \
                       (until_idle is not None and idle_since is not None and now - idle_since >= until_idle)
                to_commit = None
                if done or (now - last_ckpt) * 1000 >= sset.checkpoint_interval_ms:
                    to_commit = retry(stage.checkpoint, "checkpoint", shutdown)
                    last_ckpt = now
            # outside the lock: a commit waits for kafka-python's IO thread, which may be waiting
            # for this lock inside a rebalance listener
            if to_commit is not None:
                commit(to_commit)
                for tp in consumer.assignment():
                    hw = consumer.highwater(tp)
                    if hw is not None:
                        metrics.LAG.labels(stage.name, str(tp.partition)).set(hw - consumer.position(tp))
            if done:
                break
        else:
            with lock:
                retry(stage.write_online, "online write", shutdown)
                to_commit = retry(stage.checkpoint, "checkpoint", shutdown)
            commit(to_commit)
    except Stopping as exc:
        log.warning("stopping during an outage of %s: nothing committed since the last checkpoint", exc)
    finally:
        try:
            consumer.close(autocommit=False)
        except Exception as exc:  # noqa: BLE001 -- leaving the group is best effort
            log.info("close: %s", exc)
        if producer is not None:
            producer.close(timeout=10)
    return result


def _raise(msg):
    raise RuntimeError(msg)
