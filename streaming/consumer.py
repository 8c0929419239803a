"""The ingest consumer processes: the poll loop that feeds a stage (``streaming.stages``) records and
runs its commit protocol (``streaming.commit``) every ``checkpoint_interval_ms``.

Each micro-batch: poll until ``batch_max_ms`` has passed or ``batch_max_events`` arrived -> apply
to the stage -> write the touched keys' absolute rows to the online store (with retry).

Assignment: a newly assigned partition is paused at once (in the listener) and awaits its state.
The loop restores it a step at a time (``Stage.restore_step``: open the owner's transactional
producer, which fences the previous owner, then read its changelog from where the local
checkpoint ends) between the micro-batches of the partitions it already has; when the state is
installed, the partition is sought to the offset the state covers and resumed.  So a crash
replays exactly the records after the last commit onto exactly the state before them, on any
host.  kafka-python 3 runs listeners on its IO thread, where a long restore would hold up the
client's event loop: the listener only records the assignment.

Rebalances: ``on_partitions_revoked`` runs the commit protocol for the revoked partitions (their
changelog transactions carry the offsets; no consumer commit is involved) and drops them;
``on_partitions_lost`` (this member was evicted: another may own them already) drops them without
committing.  A lock serialises listeners with the loop.  SIGTERM/SIGINT: finish the batch, run the
commit protocol, leave the group.  Store or broker outage: the failing step is retried with
exponential backoff; nothing is committed meanwhile.
"""
from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass, field

from streaming import metrics
from streaming.changelog import Fenced
from streaming.commit import commit_checkpoint
from streaming.kafka_internals import complete_interrupted_joins, undecodable_batch
from streaming.stages import ItemStage, Stage, UserStage
from streaming.topics import changelog_configs, ensure_topics

log = logging.getLogger("sassflow.ingest")


class Stopping(Exception):
    """Raised out of a retry loop when shutdown is requested during an outage (nothing committed)."""


class Shutdown:
    def __init__(self):
        self.flag = threading.Event()

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.flag.set())


# A bug, not an outage: retrying cannot help, so these end the process (its state stays at the last
# checkpoint) instead of spinning in the retry loop.
NOT_RETRIED = (TypeError, AttributeError, NameError, AssertionError)


def retry(fn, operation: str, shutdown: Shutdown, max_backoff: float = 5.0):
    """Run fn until it succeeds; back off exponentially; give up only on shutdown (or when the state
    it works on has moved to another process: ``Fenced``)."""
    delay = 0.1
    while True:
        try:
            return fn()
        except (Stopping, Fenced, *NOT_RETRIED):
            raise
        except Exception as exc:  # noqa: BLE001 -- any store/broker failure is retried
            metrics.RETRIES.labels(operation).inc()
            log.warning("%s failed (%s: %s); retrying in %.1fs", operation, type(exc).__name__, exc, delay)
            if shutdown.flag.wait(delay):
                raise Stopping(operation) from exc
            delay = min(delay * 2, max_backoff)


@dataclass
class RunResult:
    records: int = 0
    applied: int = 0
    first_record_at: float | None = None  # wall clock of the first non-empty poll
    last_flush_at: float | None = None  # wall clock after the last batch with records was written
    restores: list = field(default_factory=list)  # per restore: partition, source, records, seconds, resumes_at


def make_stage(settings, kind: str, writer, shard: int = 0, shards: int = 1) -> Stage:
    """``kind``: "user" (a consumer-group member) or "item" (shard ``shard`` of ``shards``)."""
    if kind == "user":
        return UserStage(settings, writer)
    if kind == "item":
        return ItemStage(settings, writer, shard, shards)
    if kind == "recall":
        from features.recall_store import open_recall_store
        from streaming.recall_stage import RecallStage

        return RecallStage(settings, open_recall_store(settings))
    if kind == "catalog":
        from streaming.catalog import CatalogStage

        return CatalogStage(settings)
    raise ValueError(f"unknown stage {kind!r}; expected 'user', 'item', 'recall' or 'catalog'")


def _open_consumer(settings, stage: Stage):
    from kafka import KafkaConsumer

    complete_interrupted_joins()
    sset = settings.streaming
    return KafkaConsumer(
        **settings.kafka.client_kwargs(), group_id=stage.group, enable_auto_commit=False,
        auto_offset_reset="earliest", max_poll_records=sset.batch_max_events,
        session_timeout_ms=6_000, heartbeat_interval_ms=1_500,  # a dead member's partitions move fast
        fetch_max_bytes=16 * 1024 * 1024, max_partition_fetch_bytes=4 * 1024 * 1024,
        # kafka-python verifies CRC32C in pure Python, most of its per-record decoding time: see
        # settings.streaming.check_crcs for why skipping it on the client is safe by default.
        check_crcs=sset.check_crcs,
    )


def input_partitions(consumer, topic: str, shutdown: Shutdown) -> list[int]:
    def partitions():
        found = consumer.partitions_for_topic(topic)
        if not found:
            raise RuntimeError(f"no topic {topic}")
        return sorted(found)

    return retry(partitions, "topic metadata", shutdown)


def _subscribe(consumer, stage: Stage, lock, shutdown: Shutdown, parts: list[int]) -> None:
    """Group membership with a rebalance listener, or manual assignment of every partition (paused
    until the stage's state is restored)."""
    from kafka import TopicPartition

    if stage.subscribes:
        consumer.subscribe([stage.topic], listener=_rebalance_listener(consumer, stage, lock, shutdown))
        return
    tps = [TopicPartition(stage.topic, p) for p in parts]
    consumer.assign(tps)
    consumer.pause(*tps)
    stage.assign(parts)


def _rebalance_listener(consumer, stage: Stage, lock, shutdown: Shutdown):
    from kafka import AsyncConsumerRebalanceListener, TopicPartition

    topic = stage.topic

    def mine(tps) -> list[int]:
        return sorted(tp.partition for tp in tps if tp.topic == topic)

    class Listener(AsyncConsumerRebalanceListener):
        async def on_partitions_revoked(self, revoked):
            parts = mine(revoked)
            if not parts:
                return
            t0 = time.perf_counter()
            with lock:  # held across the revoke: no batch of these partitions may slip in between
                try:
                    commit_checkpoint(stage, parts, lock, attempt=lambda fn, op: retry(fn, op, shutdown))
                except Stopping:
                    pass
                stage.revoke(parts)
            log.info("revoked %s (commit protocol: %.3fs)", parts, time.perf_counter() - t0)

        async def on_partitions_lost(self, lost):
            parts = mine(lost)
            with lock:
                stage.revoke(parts)  # another member may own them already: its restore redoes the rest
            log.info("lost %s (dropped, nothing committed)", parts)

        async def on_partitions_assigned(self, assigned):
            parts = mine(assigned)
            with lock:
                consumer.pause(*[TopicPartition(topic, p) for p in parts])
                stage.assign(parts)
            log.info("assigned %s: paused until their state is restored", parts)

    return Listener()


def quiet_client_logs() -> None:
    """kafka-python 3 warns whenever one step of its IO thread's event loop takes over 0.1 s of wall
    time ("Task ... ran for 0.873s (>0.100s threshold). It is blocking the event loop").  In these
    consumers such steps are, by design, the rebalance listeners: kafka-python runs them on that thread,
    and the revoke listener must finish the commit protocol (history, online rows, changelog
    transaction) before the partitions move, waiting first for the lock if the poll loop is
    mid-checkpoint (restores run in the poll loop, not in a listener).  The rest are GIL hand-offs
    while the main thread is in a long C call (a parquet write, a checkpoint's JSON) or the process
    waits for a CPU on a loaded machine.  Heartbeats
    tolerate it (session timeout 6 s), so the notice is noise at the default verbosity: it is shown
    from INFO (SASSFLOW_LOG_LEVEL=INFO) on, and ``revoked`` logs its own duration."""
    selector_log = logging.getLogger("kafka.net.selector")
    if selector_log.getEffectiveLevel() > logging.INFO:
        selector_log.setLevel(logging.ERROR)


def _calm_gc() -> None:
    """Long-lived window state is millions of small objects: move what exists out of the cyclic GC's
    view and collect young objects less often (full collections stalled micro-batches)."""
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


RESTORING_POLL_MS = 10  # while a restore is under way, the partitions already served get short polls


class PollLoop:
    """Restore steps and micro-batches in, online rows and checkpoints out, until shutdown,
    ``max_events`` records or ``until_idle`` seconds without one."""

    def __init__(self, settings, stage: Stage, consumer, lock, shutdown: Shutdown, result: RunResult | None = None):
        self.sset = settings.streaming
        self.stage, self.consumer, self.lock, self.shutdown = stage, consumer, lock, shutdown
        self.result = result if result is not None else RunResult()
        self.oldest_ts: list[int] = []  # produce time of each polled batch's first record

    def _attempt(self, fn, operation):
        return retry(fn, operation, self.shutdown)

    def checkpoint(self) -> None:
        commit_checkpoint(self.stage, None, self.lock, self._attempt)
        for tp in self.consumer.assignment() - self.consumer.paused():  # paused: awaiting its state
            hw = self.consumer.highwater(tp)
            if hw is not None:
                metrics.LAG.labels(self.stage.name, str(tp.partition)).set(hw - self.consumer.position(tp))

    def restore(self) -> bool:
        """One restore step for the assigned partitions still without their state: resume those it
        completes at the offset their state covers.  True while partitions await their state."""
        from kafka import TopicPartition

        def step():
            with self.lock:
                awaiting = self.stage.awaiting_restore()
                self.consumer.pause(*[TopicPartition(self.stage.topic, p) for p in awaiting])
            return (self.stage.restore_step(awaiting) if awaiting else None), bool(awaiting)

        finished, restoring = self._attempt(step, "state restore")
        if finished:
            with self.lock:
                seeks = self.stage.install(finished)
                for p, offset in seeks.items():
                    tp = TopicPartition(self.stage.topic, p)
                    self.consumer.seek(tp, offset)
                    self.consumer.resume(tp)
            self.result.restores += [{"partition": r.partition, "source": r.plan.source, "records": r.records,
                                      "seconds": time.perf_counter() - r.started, "resumes_at": r.resumes_at}
                                     for r in finished if r.resumes_at]
        return restoring

    def poll_batch(self, max_ms: int) -> int:
        """Poll and apply one micro-batch (at most ``max_ms``); returns the number of records."""
        t_start, n = time.monotonic(), 0
        while n < self.sset.batch_max_events and not self.shutdown.flag.is_set():
            left_ms = max_ms - (time.monotonic() - t_start) * 1000
            if left_ms <= 0:
                break
            try:
                batch = self.consumer.poll(timeout_ms=int(left_ms), max_records=self.sset.batch_max_events - n)
            except Exception as exc:  # noqa: BLE001 -- only a batch decode failure is handled, the rest re-raised
                self.quarantine(exc)
                continue
            if not batch:
                break
            with self.lock:
                for tp, records in sorted(batch.items(), key=lambda kv: kv[0].partition):
                    if tp.topic == self.stage.topic and records:
                        n += len(records)
                        self.result.applied += self.stage.process(tp.partition, records)
                        self.oldest_ts.append(records[0].timestamp)
        if n and self.result.first_record_at is None:
            self.result.first_record_at = time.time() - (time.monotonic() - t_start)
        return n

    def quarantine(self, exc: Exception) -> None:
        """A record batch the client could not decode: the stage puts it aside (the user stage
        dead-letters it) and the consumer seeks past it.  Re-polling would only raise again (or, in
        kafka-python 3.0.12, spin for ever), so any other error is re-raised."""
        from kafka import TopicPartition

        bad = undecodable_batch(exc)
        if bad is None or bad.topic != self.stage.topic:
            raise exc
        with self.lock:
            if self.stage.quarantine(bad):
                log.error("quarantined records %d..%d of partition %d (%s)", bad.first_offset, bad.next_offset - 1,
                          bad.partition, bad.error)
            self.consumer.seek(TopicPartition(bad.topic, bad.partition), bad.next_offset)

    def publish_batch(self, n: int, applied: int, seconds: float) -> None:
        """After a micro-batch with records: the online rows, then the metrics."""
        with self.lock:
            self._attempt(self.stage.write_online, "online write")
        name = self.stage.name
        metrics.EVENTS_IN.labels(name).inc(n)
        metrics.APPLIED.labels(name).inc(applied)
        wall_ms = time.time() * 1000
        for ts in self.oldest_ts:
            metrics.FRESHNESS_SECONDS.labels(name).observe(max(0.0, (wall_ms - ts) / 1000))
        self.oldest_ts.clear()
        metrics.BATCH_SECONDS.labels(name).observe(seconds)
        self.result.records += n
        self.result.last_flush_at = time.time()

    def run(self, max_events: int | None, until_idle: float | None) -> RunResult:
        last_ckpt, idle_since = time.monotonic(), None  # an outage retry is not idleness, nor is a restore
        while not self.shutdown.flag.is_set():
            restoring = self.restore()
            t0, applied_before = time.perf_counter(), self.result.applied
            n = self.poll_batch(RESTORING_POLL_MS if restoring else self.sset.batch_max_ms)
            now = time.monotonic()
            if n:
                self.publish_batch(n, self.result.applied - applied_before, time.perf_counter() - t0)
            if n or restoring:
                idle_since = None
            elif idle_since is None:
                idle_since = now
            done = (max_events is not None and self.result.records >= max_events) or \
                   (until_idle is not None and idle_since is not None and now - idle_since >= until_idle)
            if done or (now - last_ckpt) * 1000 >= self.sset.checkpoint_interval_ms:
                self.checkpoint()
                last_ckpt = now
            if done:
                return self.result
        self.checkpoint()  # shutdown requested: the batch in hand is applied, now commit it
        return self.result


# A stage without group membership (an item shard, the recall stage) that is fenced takes its state
# over again, at most this many times an hour.  The newer producer is mostly its own: after a broker
# failure the transaction coordinator bumps the epoch of a transaction it aborted, or a reopened
# producer races the one it replaces (streaming.changelog); the process would otherwise stop with
# nobody taking the shard over.  A second live process of the same shard fences it again each time:
# the two alternate (exactly: each restores before it applies anything) until one runs out of
# re-takes and stops.
RETAKES_PER_HOUR = 3


def run_stage(settings, stage_name: str = "user", shard: int = 0, shards: int = 1, index: int = 0,
              max_events: int | None = None, until_idle: float | None = None,
              install_signals: bool = True, shutdown: Shutdown | None = None) -> RunResult:
    """Run one consumer process of one stage until SIGTERM, ``max_events`` records, or
    ``until_idle`` seconds without a record."""
    from features.store import OnlineWriter, open_store

    shutdown = shutdown or Shutdown()
    if install_signals:
        shutdown.install()
    quiet_client_logs()
    port = settings.streaming.metrics_port
    metrics.serve(port + index if port else 0)
    # the recall and catalogue stages write their own stores
    writer = OnlineWriter(open_store(settings)) if stage_name in ("user", "item") else None
    result, retakes = RunResult(), []
    while True:
        stage = make_stage(settings, stage_name, writer, shard, shards)
        fenced = _run_owner(settings, stage, shutdown, result, max_events, until_idle)
        if fenced is None:
            return result
        retakes = [t for t in retakes if time.monotonic() - t < 3600]
        if stage.subscribes or len(retakes) >= RETAKES_PER_HOUR or shutdown.flag.is_set():
            log.error("stopping: another process has taken over this %s stage's state (%s)", stage.name, fenced)
            return result
        retakes.append(time.monotonic())
        log.warning("%s stage fenced (%s) and no group decides who owns it: taking its state over again (%d of %d "
                    "this hour)", stage.name, fenced, len(retakes), RETAKES_PER_HOUR)


def _run_owner(settings, stage: Stage, shutdown: Shutdown, result: RunResult, max_events: int | None,
               until_idle: float | None) -> Fenced | None:
    """One stage object's run, from its consumer's start to its end; returns the fencing that ended
    it, if one did."""
    consumer = _open_consumer(settings, stage)
    lock = threading.RLock()
    loop = PollLoop(settings, stage, consumer, lock, shutdown, result)
    try:
        parts = input_partitions(consumer, stage.topic, shutdown)
        if stage.changelog is not None:
            retry(lambda: ensure_topics(settings, {stage.changelog: stage.changelog_partitions(len(parts))},
                                        changelog_configs(), grow=True), "changelog topic", shutdown)
        _subscribe(consumer, stage, lock, shutdown, parts)
        _calm_gc()
        loop.run(max_events, until_idle)
        return None
    except Stopping as exc:
        log.warning("stopping during an outage of %s: nothing committed since the last checkpoint", exc)
        return None
    except Fenced as exc:
        return exc
    finally:
        try:
            consumer.close(autocommit=False)
        except Exception as exc:  # noqa: BLE001 -- leaving the group is best effort
            log.info("close: %s", exc)
        stage.close()


def run_catalog_stage(settings, until_idle: float | None = None, max_events: int | None = None, shutdown=None):
    """Run the catalogue stage (the ingest's consumer process, ``streaming.consumer.run_stage``) until
    SIGTERM (when ``shutdown`` is None), ``max_events`` records or ``until_idle`` seconds without one."""
    from streaming.catalog import ensure_catalog_topics

    ensure_catalog_topics(settings)
    return run_stage(settings, "catalog", max_events=max_events, until_idle=until_idle,
                     install_signals=shutdown is None, shutdown=shutdown)
