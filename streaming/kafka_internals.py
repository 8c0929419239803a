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
    return problems
