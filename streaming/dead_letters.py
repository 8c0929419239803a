"""The dead-letter topic: malformed records, with their original bytes and the reason.

Headers: ``reason`` (``EventError.reason``), ``error`` (the message, at most 1000 bytes),
``source_topic``, ``source_partition``, ``source_offset``.  A record batch the client could not
decode (``reason`` = ``undecodable_batch``: its codec library is missing or its bytes are corrupt)
is dead-lettered as one message: the value is the batch exactly as fetched (Kafka's record batch
v2 format, still compressed: decode it with any client that has the codec), ``source_offset`` its
first offset and ``source_last_offset`` its last.

Exactly once, across crashes and broker failures.  ``send`` only queues a letter: the poll loop
does no broker I/O per record.  ``flush`` (step 1 of the commit protocol, retried with backoff by
the consumer) delivers the queue and returns only when every letter is acknowledged; a letter
leaves the queue on its acknowledgement, so a failed or timed-out delivery keeps it for the next
attempt.  Which letters are on the topic already is read back from the topic itself (the replay
guard): once per partition from its first queued letter after an assignment (a replay after a
crash), and again after any delivery that failed, whose record may or may not have landed.  The
read-back covers the whole topic up to its end or raises; it never guesses from part of it.  Every
broker call has a deadline (``streaming.dead_letter_timeout_s``): the pinned kafka-python waits for
ever on a flush, and a request can outlive a broker; after a timed-out delivery the producer is
replaced.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from sassflow.contracts.events import EventError
from streaming import metrics
from streaming.kafka_internals import UndecodableBatch, close_producer

log = logging.getLogger("sassflow.ingest")

UNDECODABLE = "undecodable_batch"


@dataclass
class Letter:
    """A dead letter of one source record (or undecodable batch), until the topic has acknowledged it."""

    partition: int
    offset: int
    reason: str
    key: bytes | None
    value: bytes
    headers: list
    delivery: object = None  # the producer's future, while a send is under way


class DeadLetters:
    def __init__(self, settings, source_topic: str, dlq_topic: str | None = None):
        self.s = settings
        self.source_topic = source_topic
        self.dlq_topic = dlq_topic or settings.kafka.dlq_topic  # the catalogue has its own
        self.timeout_s = settings.streaming.dead_letter_timeout_s
        self.producer = None  # opened at the first delivery, again after one that timed out
        # partition -> (from which offset on it was read back, its offsets known to be on the topic)
        self._on_topic: dict[int, tuple[int, set[int]]] = {}
        self._queue: dict[tuple[int, int], Letter] = {}  # (partition, offset) -> letter not yet acknowledged

    def forget(self, partition: int) -> None:
        """A revoked or (re)assigned partition: its unacknowledged letters are its next owner's to
        redo, and its replay guard is read again at its first letter."""
        self._on_topic.pop(partition, None)
        for key in [k for k in self._queue if k[0] == partition]:
            del self._queue[key]

    def send(self, record, err: EventError) -> None:
        """Queue the letter of a malformed record (delivered by ``flush``)."""
        self._queue_letter(record.partition, record.offset, err.reason, err.message, record.key,
                           record.value if record.value is not None else b"")

    def send_batch(self, batch: UndecodableBatch) -> None:
        """Queue a whole batch the client could not decode, as one letter (see the module docstring)."""
        self._queue_letter(batch.partition, batch.first_offset, UNDECODABLE, batch.error, None, batch.raw,
                           [("source_last_offset", str(batch.next_offset - 1).encode())])

    def _queue_letter(self, partition: int, offset: int, reason: str, message: str, key, value: bytes,
                      extra_headers: list | None = None) -> None:
        headers = [("reason", reason.encode()), ("error", message.encode()[:1000]),
                   ("source_topic", self.source_topic.encode()),
                   ("source_partition", str(partition).encode()),
                   ("source_offset", str(offset).encode())] + (extra_headers or [])
        self._queue.setdefault((partition, offset), Letter(partition, offset, reason, key, value, headers))

    @property
    def queued(self) -> int:
        return len(self._queue)

    def flush(self) -> None:
        """Deliver every queued letter not on the topic yet; return when all are acknowledged.
        Raises (and keeps the unacknowledged letters queued) when the broker does not answer in time
        or a delivery failed: the caller retries."""
        if not self._queue:
            return
        for p in sorted({p for p, _ in self._queue}):
            first = min(o for q, o in self._queue if q == p)
            if p not in self._on_topic or first < self._on_topic[p][0]:
                self.already_sent(p, first)
        for letter in list(self._queue.values()):
            if letter.offset in self._on_topic[letter.partition][1]:
                del self._queue[(letter.partition, letter.offset)]  # a replay's letter, delivered before the crash
            elif letter.delivery is None:
                self.producer = self.producer or self._open_producer()
                letter.delivery = self.producer.send(self.dlq_topic, key=letter.key, value=letter.value,
                                                     headers=letter.headers)
        self._await_deliveries()

    def _await_deliveries(self) -> None:
        from kafka.errors import KafkaTimeoutError

        if not self._queue:
            return  # every letter was a replay's
        try:
            self.producer.flush(timeout=self.timeout_s)
        except KafkaTimeoutError:
            log.warning("dead letters not acknowledged within %.0f s: reopening the producer", self.timeout_s)
            close_producer(self.producer, 1)  # fails what it still holds: settled below
            self.producer = None
        failed: dict[int, Exception] = {}  # partition -> the first failure of a delivery of its letters
        for key, letter in list(self._queue.items()):
            if letter.delivery.succeeded():
                self._on_topic[letter.partition][1].add(letter.offset)
                metrics.DEAD_LETTERED.labels(letter.reason).inc()
                del self._queue[key]
            else:
                error = letter.delivery.exception or KafkaTimeoutError(f"dead letter not acknowledged: {self.dlq_topic}")
                failed.setdefault(letter.partition, error)
                letter.delivery = None
        for p in failed:
            self._on_topic.pop(p, None)  # landed or not: read the topic back before resending
        if failed:
            raise next(iter(failed.values()))

    def _open_producer(self):
        from streaming.produce import make_producer

        # the client's defaults wait 30 s for a first broker and a minute for a topic's metadata
        deadline_ms = int(self.timeout_s * 1000)
        return make_producer(self.s, linger_ms=5, max_block_ms=deadline_ms, bootstrap_timeout_ms=deadline_ms)

    def already_sent(self, partition: int, from_offset: int) -> set[int]:
        """Offsets of ``partition`` from ``from_offset`` on that are on the dead-letter topic; kept as
        the replay guard of the partition.  Raises when the topic cannot be read to its end in time."""
        sent = self._read_back(partition, from_offset)
        self._on_topic[partition] = (from_offset, sent)
        return sent

    def _read_back(self, partition: int, from_offset: int) -> set[int]:
        from kafka import KafkaConsumer, TopicPartition
        from kafka.errors import KafkaTimeoutError

        deadline = time.monotonic() + self.timeout_s

        def left_ms() -> int:
            left = deadline - time.monotonic()
            if left <= 0:
                raise KafkaTimeoutError(f"{self.dlq_topic} not read back within {self.timeout_s:.0f} s")
            return int(left * 1000)

        c = KafkaConsumer(**self.s.kafka.client_kwargs(), enable_auto_commit=False, group_id=None,
                          bootstrap_timeout_ms=left_ms())
        try:
            tps = [TopicPartition(self.dlq_topic, q) for q in (c.partitions_for_topic(self.dlq_topic) or set())]
            if not tps:
                return set()
            c.assign(tps)
            c.seek_to_beginning(*tps)
            end = c.end_offsets(tps, timeout_ms=left_ms())
            found: set[int] = set()
            while any(self._position(c, tp, left_ms()) < end[tp] for tp in tps):
                for recs in c.poll(timeout_ms=min(200, left_ms())).values():
                    found |= {int(h["source_offset"]) for h in (dict(r.headers or []) for r in recs)
                              if self._guards(h, partition, from_offset)}
            return found
        finally:
            c.close()

    @staticmethod
    def _position(consumer, tp, timeout_ms: int) -> int:
        from kafka.errors import KafkaTimeoutError

        position = consumer.position(tp, timeout_ms=timeout_ms)
        if position is None:
            raise KafkaTimeoutError(f"no position on {tp} within {timeout_ms} ms")
        return position

    def _guards(self, headers: dict, partition: int, from_offset: int) -> bool:
        """Whether a letter's headers name a record of ``partition`` at or after ``from_offset``."""
        return (headers.get("source_topic") == self.source_topic.encode()
                and int(headers.get("source_partition", b"-1")) == partition
                and int(headers.get("source_offset", b"-1")) >= from_offset)

    def close(self) -> None:
        if self.producer is not None:
            close_producer(self.producer, 10)
