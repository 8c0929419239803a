"""The dead-letter topic: malformed records, with their original bytes and the reason.

Headers: ``reason`` (``EventError.reason``), ``error`` (the message, at most 1000 bytes),
``source_topic``, ``source_partition``, ``source_offset``.  A record batch the client could not
decode (``reason`` = ``undecodable_batch``: its codec library is missing or its bytes are corrupt)
is dead-lettered as one message: the value is the batch exactly as fetched (Kafka's record batch
v2 format, still compressed: decode it with any client that has the codec), ``source_offset`` its
first offset and ``source_last_offset`` its last.  Exact across crashes: at the first bad
record after a partition is assigned, the dead-letter topic is scanned once for records already
dead-lettered from that partition at or after that offset (a replay after a crash), and those are
not sent again.
"""
from __future__ import annotations

import time

from sassflow.contracts.events import EventError
from streaming import metrics
from streaming.kafka_internals import UndecodableBatch

UNDECODABLE = "undecodable_batch"


class DeadLetters:
    def __init__(self, settings, producer, source_topic: str, dlq_topic: str | None = None):
        self.s = settings
        self.producer = producer
        self.source_topic = source_topic
        self.dlq_topic = dlq_topic or settings.kafka.dlq_topic  # the catalogue has its own
        self._sent: dict[int, set[int]] = {}  # partition -> offsets already on the topic (replay guard)

    def forget(self, partition: int) -> None:
        """A (re)assigned partition is scanned again at its first bad record."""
        self._sent.pop(partition, None)

    def send(self, record, err: EventError) -> None:
        self._send(record.partition, record.offset, err.reason, err.message, record.key,
                   record.value if record.value is not None else b"")

    def send_batch(self, batch: UndecodableBatch) -> None:
        """A whole batch the client could not decode, as one message (see the module docstring)."""
        self._send(batch.partition, batch.first_offset, UNDECODABLE, batch.error, None, batch.raw,
                   [("source_last_offset", str(batch.next_offset - 1).encode())])

    def _send(self, partition: int, offset: int, reason: str, message: str, key, value: bytes,
              extra_headers: list | None = None) -> None:
        sent = self._sent.get(partition)
        if sent is None:  # first bad record of this partition since assignment
            sent = self.already_sent(partition, offset)
        if offset in sent:
            return
        headers = [("reason", reason.encode()), ("error", message.encode()[:1000]),
                   ("source_topic", self.source_topic.encode()),
                   ("source_partition", str(partition).encode()),
                   ("source_offset", str(offset).encode())] + (extra_headers or [])
        self.producer.send(self.dlq_topic, key=key, value=value, headers=headers)
        metrics.DEAD_LETTERED.labels(reason).inc()

    def flush(self) -> None:
        self.producer.flush()

    def already_sent(self, partition: int, from_offset: int) -> set[int]:
        """Offsets of ``partition`` from ``from_offset`` on that are on the dead-letter topic; kept as
        the replay guard of the partition."""
        sent = self._sent[partition] = self._already_sent(partition, from_offset)
        return sent

    def _already_sent(self, partition: int, from_offset: int) -> set[int]:
        from kafka import KafkaConsumer, TopicPartition

        dlq = self.dlq_topic
        c = KafkaConsumer(**self.s.kafka.client_kwargs(), enable_auto_commit=False, group_id=None)
        try:
            tps = [TopicPartition(dlq, q) for q in (c.partitions_for_topic(dlq) or set())]
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
                        if (h.get("source_topic") == self.source_topic.encode()
                                and int(h.get("source_partition", b"-1")) == partition
                                and int(h.get("source_offset", b"-1")) >= from_offset):
                            found.add(int(h["source_offset"]))
            return found
        finally:
            c.close()
