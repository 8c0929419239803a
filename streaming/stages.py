"""The two stateful stages of the ingest, behind one interface (``Stage``).

* ``UserStage`` -- consumer group ``kafka.consumer_group`` on the events topic (keyed by user, so
  one partition owns every key of its users).  Validates each record, dead-letters the bad ones,
  applies valid events to the partition's ``UserFeatures``, writes ``user_scenario_stats`` and
  ``user_profile`` rows, and appends the events to the offline history.
* ``ItemStage`` -- items are touched from every partition, so item shard k of K reads *all*
  partitions of the events topic (manual assignment, no group membership: one owner per shard by
  construction) and keeps the items with ``item_id % K == k``.  Reading the topic twice costs less
  than re-producing every event to a repartition topic, and the shard's checkpoint holds the next
  offset of every partition, so nothing is applied twice.

A stage never touches Kafka offsets itself: the poll loop (``streaming.consumer``) feeds it records
and runs the commit protocol (``streaming.commit``) over the steps it exposes.  A record below a
partition's next offset is skipped, so a stale fetch after a rebalance cannot be applied twice.

Both stages drop producer duplicates (``streaming.dedup``, one deduper per partition, checkpointed
with the window state) with the same rule over the same valid records, so the user rows, the item
rows and the history agree on which copy counted.  Record headers are ignored (the event is the
value).  A batch the client cannot decode reaches ``quarantine``: the user stage dead-letters it
whole (its raw bytes, partition and offsets, and the reason), the item stage skips it; both move
their next offset past it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from sassflow.contracts.events import EventError, parse_event_fields
from sassflow.contracts.features import ITEM_SCENARIO_STATS, USER_PROFILE, USER_SCENARIO_STATS
from sassflow.contracts.history import COLUMNS, segment_name
from streaming import metrics
from streaming.aggregate import ItemFeatures, UserFeatures, ev_from_fields
from streaming.dead_letters import DeadLetters
from streaming.dedup import Deduper
from streaming.history import append_history, high_water
from streaming.kafka_internals import UndecodableBatch
from streaming.state import CheckpointStore, checkpoint_root


class Stage(Protocol):
    name: str  # metric label
    topic: str
    group: str
    subscribes: bool  # True: a consumer-group member; False: manual assignment of every partition

    def assign(self, partitions: list[int]) -> dict[int, int]:
        """Take ownership (restore state); returns the offset to seek each partition to."""

    def revoke(self, partitions: list[int]) -> None: ...

    def process(self, partition: int, records) -> int:
        """Apply records of one partition; returns how many valid events were applied."""

    def quarantine(self, batch: UndecodableBatch) -> bool:
        """Put aside a batch the client could not decode and move past it; False if not owned."""

    def flush_outputs(self) -> None:
        """Commit step 1: records produced on the side (dead letters) are on the broker."""

    def append_history(self, partitions: list[int] | None) -> None:
        """Commit step 2: applied events are in the offline history."""

    def write_online(self) -> None:
        """Commit step 3 (also after every micro-batch): touched keys' rows are in the online store."""

    def save_state(self, partitions: list[int] | None) -> dict[int, int]:
        """Commit step 4: state + the offsets it covers saved atomically; returns those offsets."""

    def close(self) -> None: ...


def item_group(settings, shard: int, shards: int) -> str:
    """The consumer group of one item-stage shard (its committed offsets show its lag)."""
    return f"{settings.kafka.consumer_group}.items.{shard}of{shards}"


def _event_row(d: dict, partition: int, offset: int) -> tuple:
    """One history row, in ``COLUMNS`` order."""
    return (d["event_id"], d["user_id"], d["item_id"], d["scenario"], d["event_type"], d["event_time"],
            d.get("dwell_ms"), partition, offset)


@dataclass
class UserPartition:
    next_offset: int
    watermark: int
    features: UserFeatures
    dedup: Deduper
    history_hw: int
    pending: list = field(default_factory=list)  # history rows not yet on disk
    touched: set = field(default_factory=set)


class UserStage:
    name = "user"
    subscribes = True

    def __init__(self, settings, writer, producer):
        self.s = settings
        self.topic = settings.kafka.events_topic
        self.group = settings.kafka.consumer_group
        self.writer = writer
        self.dead_letters = DeadLetters(settings, producer, self.topic)
        self.ckpt = CheckpointStore(checkpoint_root(settings, self.group, self.topic))
        self.parts: dict[int, UserPartition] = {}
        self.scenarios = set(settings.scenarios)

    def assign(self, partitions: list[int]) -> dict[int, int]:
        seeks = {}
        for p in partitions:
            if p not in self.parts:
                saved = self.ckpt.load(f"p{p}") or {"next_offset": 0, "watermark": 0, "state": {}}
                users = UserFeatures(self.s.scenarios)
                users.load_json(saved["state"])
                dedup = Deduper.from_json(saved.get("dedup"), self.s.streaming.dedup_horizon_ms)
                self.parts[p] = UserPartition(saved["next_offset"], saved["watermark"], users, dedup,
                                              high_water(self.s.streaming.offline_dir, self.topic, p))
                self.dead_letters.forget(p)
            seeks[p] = self.parts[p].next_offset
        return seeks

    def revoke(self, partitions: list[int]) -> None:
        for p in partitions:
            self.parts.pop(p, None)

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
                self.dead_letters.send(r, err)
                continue
            ev = ev_from_fields(d)
            if not part.dedup.admit(ev.event_id, ev.event_time):
                metrics.DUPLICATES.labels(self.name).inc()
                continue
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

    def quarantine(self, batch: UndecodableBatch) -> bool:
        part = self.parts.get(batch.partition)
        if part is None:
            return False
        if batch.next_offset > part.next_offset:
            self.dead_letters.send_batch(batch)
            metrics.UNDECODABLE.labels(self.name).inc(batch.next_offset - max(batch.first_offset, part.next_offset))
            part.next_offset = batch.next_offset
        return True

    def flush_outputs(self) -> None:
        self.dead_letters.flush()

    def append_history(self, partitions: list[int] | None) -> None:
        import pandas as pd

        for p in self._owned(partitions):
            part = self.parts[p]
            if part.pending:
                first, last = part.pending[0][-1], part.pending[-1][-1]  # kafka offsets
                append_history(self.s.streaming.offline_dir, pd.DataFrame.from_records(part.pending, columns=COLUMNS),
                               name=segment_name(self.topic, p, first, last))
                part.history_hw = last
                part.pending = []

    def write_online(self) -> None:
        for part in self.parts.values():
            if part.touched:
                scen, prof = part.features.rows(part.touched)
                self.writer.write(USER_SCENARIO_STATS.name,
                                  [(USER_SCENARIO_STATS.entity((u, s)), f, t) for u, s, f, t in scen])
                self.writer.write(USER_PROFILE.name, [(USER_PROFILE.entity(u), f, t) for u, f, t in prof])
                part.touched.clear()

    def save_state(self, partitions: list[int] | None) -> dict[int, int]:
        offsets = {}
        for p in self._owned(partitions):
            part = self.parts[p]
            self.ckpt.save(f"p{p}", {"topic": self.topic, "partition": p, "next_offset": part.next_offset,
                                     "watermark": part.watermark},
                           state=part.features.snapshot.text(), dedup=part.dedup.snapshot_text())
            offsets[p] = part.next_offset
        return offsets

    def close(self) -> None:
        self.dead_letters.producer.close(timeout=10)

    def _owned(self, partitions: list[int] | None) -> list[int]:
        return sorted(p for p in (self.parts if partitions is None else partitions) if p in self.parts)


class ItemStage:
    name = "item"
    subscribes = False

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
        horizon = settings.streaming.dedup_horizon_ms
        self.dedup = {int(p): Deduper.from_json(d, horizon) for p, d in saved.get("dedup", {}).items()}
        self.touched: set = set()
        self.scenarios = set(settings.scenarios)

    def assign(self, partitions: list[int]) -> dict[int, int]:
        for p in partitions:
            self.next_offset.setdefault(p, 0)
            self.dedup.setdefault(p, Deduper(self.s.streaming.dedup_horizon_ms))
        return {p: self.next_offset[p] for p in partitions}

    def revoke(self, partitions: list[int]) -> None:
        pass  # manual assignment: never revoked

    def process(self, partition: int, records) -> int:
        applied = 0
        nxt = self.next_offset.get(partition, 0)
        dedup = self.dedup[partition]
        for r in records:
            if r.offset < nxt:
                continue
            nxt = r.offset + 1
            try:
                d = parse_event_fields(r.value, self.scenarios, self.s.kafka.max_event_bytes)
            except EventError:
                continue  # the user stage dead-letters it
            if not dedup.admit(d["event_id"], d["event_time"]):  # every valid event: the user stage's rule
                metrics.DUPLICATES.labels(self.name).inc()
                continue
            if d["item_id"] % self.shards != self.shard:
                continue
            ev = ev_from_fields(d)
            self.features.add(ev)
            self.touched.add((ev.item_id, ev.scenario))
            applied += 1
        self.next_offset[partition] = nxt
        return applied

    def quarantine(self, batch: UndecodableBatch) -> bool:
        if batch.partition not in self.next_offset:
            return False
        # the user stage dead-letters the batch; this shard only moves past it
        self.next_offset[batch.partition] = max(self.next_offset[batch.partition], batch.next_offset)
        return True

    def flush_outputs(self) -> None:
        pass  # produces nothing

    def append_history(self, partitions: list[int] | None) -> None:
        pass  # the user stage writes the history

    def write_online(self) -> None:
        if self.touched:
            rows = self.features.rows(self.touched)
            self.writer.write(ITEM_SCENARIO_STATS.name,
                              [(ITEM_SCENARIO_STATS.entity((i, s)), f, t) for i, s, f, t in rows])
            self.touched.clear()

    def save_state(self, partitions: list[int] | None) -> dict[int, int]:
        dedup = "{" + ",".join(f'"{p}":{d.snapshot_text()}' for p, d in sorted(self.dedup.items())) + "}"
        self.ckpt.save("state", {"topic": self.topic, "offsets": {str(p): o for p, o in self.next_offset.items()}},
                       state=self.features.snapshot.text(), dedup=dedup)
        return dict(self.next_offset)

    def close(self) -> None:
        pass
