"""The kafka-python internals the consumer relies on, behind one adapter, for the pinned release.

A record batch the client cannot decode (its codec library is missing, or the compressed bytes are
corrupt) makes kafka-python 3.0.12 raise out of ``KafkaConsumer.poll`` from inside the fetcher's
``PartitionRecords._unpack_records`` generator, without saying which partition or offsets; worse,
the next ``poll`` then spins for ever on the dead generator (the partition's position never moves
past the batch).  The exception's traceback still holds that generator's frame, whose locals are
the partition (``tp``) and the batch (``batch``: base offset, next offset, record count, and its
raw bytes, still compressed).  ``undecodable_batch`` reads them there, so the consumer can
quarantine exactly that batch and seek past it (a seek also makes the fetcher drop the dead
generator).  ``check_pinned_kafka`` (run by ``tests/streaming``) fails loudly when an upgrade moves
these names.

A fenced transactional producer (``producer_fenced``) is told by its transaction manager's last error;
``transaction_step`` and ``close_producer`` put timeouts on transactional calls and on closing that
the pinned release waits on for ever after a broker failure.

``complete_interrupted_joins`` fixes a lost group join: when ``poll``'s timeout expires during a
rebalance the join goes on in the background, and when the join itself makes ``need_rejoin()``
false (the leader's new assignment snapshot matches the metadata that triggered the rebalance), the
pinned release never runs its completion step: ``on_partitions_revoked`` ran, ``on_partitions_assigned``
never does, and the consumer keeps fetching partitions its listener dropped.
"""
from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass

PINNED = "3.0."  # the kafka-python release line this adapter was written against


@dataclass(frozen=True)
class UndecodableBatch:
    topic: str
    partition: int
    first_offset: int
    next_offset: int  # the offset right after the batch
    records: int
    raw: bytes  # the batch as fetched (Kafka's record batch v2 format, payload still compressed)
    error: str


def undecodable_batch(exc: BaseException) -> UndecodableBatch | None:
    """The batch ``exc`` was raised while decoding, or None when ``exc`` did not come from a batch."""
    from kafka.record.default_records import DefaultRecordBatch
    from kafka.structs import TopicPartition

    tb = exc.__traceback__
    while tb is not None:
        local = tb.tb_frame.f_locals
        batch, tp = local.get("batch"), local.get("tp")
        if isinstance(batch, DefaultRecordBatch) and isinstance(tp, TopicPartition):
            return UndecodableBatch(tp.topic, tp.partition, batch.base_offset, batch.next_offset,
                                    batch.records_count, bytes(batch._buffer), f"{type(exc).__name__}: {exc}")
        tb = tb.tb_next
    return None


def producer_fenced(producer) -> bool:
    """Whether a transactional producer has been fenced (another one opened its transactional id).
    kafka-python 3.0.12 raises ``ProducerFencedError`` once; every later transactional call raises
    a plain ``KafkaError`` ("... in an error state ..."), while its transaction manager keeps the
    ``ProducerFencedError`` as ``last_error``."""
    from kafka.errors import ProducerFencedError

    manager = getattr(producer, "_transaction_manager", None)
    return manager is not None and isinstance(manager.last_error, ProducerFencedError)


def transaction_step(producer, step: str, timeout_s: float, *args) -> None:
    """``send_offsets_to_transaction(*args)``, ``commit_transaction()`` or ``abort_transaction()``
    (``step``: "send_offsets", "commit", "abort") of a transactional producer, given up after
    ``timeout_s`` with ``KafkaTimeoutError``.  kafka-python 3.0.12 waits on them without a timeout,
    and its sender can drop the request for good: when the coordinator's node refuses connections
    (a broker killed), ``Sender._maybe_send_transactional_request`` leaves the exception path with
    ``target_node`` still set and never re-enqueues the request, so the wait never ends."""
    from kafka.errors import KafkaTimeoutError

    manager = producer._transaction_manager
    start = {"send_offsets": manager.send_offsets_to_transaction, "commit": manager.begin_commit,
             "abort": manager.begin_abort}[step]
    result = start(*args)
    producer._sender.wakeup()
    if not result.wait(timeout_ms=timeout_s * 1000):
        raise KafkaTimeoutError(f"transaction step {step!r} not done after {timeout_s:.0f} s")


def close_producer(producer, timeout_s: float) -> None:
    """Close a producer even when its records cannot be delivered: kafka-python 3.0.12's ``close``
    raises out of its flush on a timeout and leaves the sender thread running; force it closed."""
    from kafka.errors import KafkaTimeoutError

    try:
        producer.close(timeout=timeout_s)
    except KafkaTimeoutError:
        producer._sender.force_close()  # fails the undelivered batches, then the sender ends
        producer._sender.join(timeout_s)
        producer.close(timeout=0)


def complete_interrupted_joins() -> None:
    """Make a join count as needing completion from its prepare step (``rejoining``, set before the
    revoke callback) until its completion step (which clears it after the assign callback), so the
    next ``poll`` finishes it.  Idempotent."""
    from kafka.coordinator.consumer import ConsumerCoordinator

    original = ConsumerCoordinator.need_rejoin
    if getattr(original, "completes_interrupted_joins", False):
        return

    def need_rejoin(self):
        return bool(getattr(self, "rejoining", False)) or original(self)

    need_rejoin.completes_interrupted_joins = True
    ConsumerCoordinator.need_rejoin = need_rejoin


def check_pinned_kafka() -> list[str]:
    """Problems with the installed kafka-python for this adapter (empty when all is in place)."""
    import inspect

    problems = []
    version = importlib.metadata.version("kafka-python")
    if not version.startswith(PINNED):
        problems.append(f"kafka-python {version} is installed; streaming/kafka_internals.py was written for {PINNED}x")
    from kafka.consumer.fetcher import Fetcher
    from kafka.record.default_records import DefaultRecordBatch

    unpack = getattr(getattr(Fetcher, "PartitionRecords", None), "_unpack_records", None)
    if unpack is None or not {"tp", "batch"} <= set(unpack.__code__.co_varnames):
        problems.append("Fetcher.PartitionRecords._unpack_records no longer has the locals tp and batch")
    for name in ("base_offset", "next_offset", "records_count", "_buffer"):
        if not hasattr(DefaultRecordBatch, name) and name not in getattr(DefaultRecordBatch, "__slots__", ()):
            problems.append(f"DefaultRecordBatch.{name} is gone")
    if "_maybe_uncompress" not in dict(inspect.getmembers(DefaultRecordBatch)):
        problems.append("DefaultRecordBatch._maybe_uncompress is gone")
    from kafka import KafkaProducer
    from kafka.producer.transaction_manager import TransactionManager

    if "_transaction_manager" not in inspect.getsource(KafkaProducer.__init__) or \
            not isinstance(getattr(TransactionManager, "last_error", None), property):
        problems.append("KafkaProducer._transaction_manager.last_error is gone (producer_fenced)")
    for name in ("send_offsets_to_transaction", "begin_commit", "begin_abort"):
        if not callable(getattr(TransactionManager, name, None)):
            problems.append(f"TransactionManager.{name} is gone (transaction_step)")
    if "self._sender" not in inspect.getsource(KafkaProducer.commit_transaction):
        problems.append("KafkaProducer._sender is gone (transaction_step, close_producer)")
    from kafka.coordinator.base import BaseCoordinator

    join = inspect.getsource(BaseCoordinator.join_group_async)
    if "while self.need_rejoin()" not in join or "self.rejoining = False" not in join:
        problems.append("BaseCoordinator.join_group_async no longer loops on need_rejoin() and clears"
                        " rejoining (complete_interrupted_joins)")
    return problems
