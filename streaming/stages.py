"""The two stateful stages of the ingest, behind one interface (``Stage``).

* ``UserStage`` -- consumer group ``kafka.consumer_group`` on the events topic (keyed by user, so
  one partition owns every key of its users).  Validates each record, dead-letters the bad ones,
  applies valid events to the partition's ``UserFeatures``, writes ``user_scenario_stats`` and
  ``user_profile`` rows, and appends the events to the offline history.
* ``ItemStage`` -- items are touched from every partition, so item shard k of K reads *all*
  partitions of the events topic (manual assignment, no group membership: one owner per shard by
  construction) and keeps the items with ``item_id % K == k``.  Reading the topic twice costs less
  than re-producing every event to a repartition topic, and the shard's state holds the next
  offset of every partition, so nothing is applied twice.

State owners: each user-stage partition, and each item shard.  An owner's state lives on its
changelog partition (``streaming.changelog``; the user stage's topic has a partition per input
partition, the item stages' one per shard) and, as a cache, in a local checkpoint
(``streaming.state``).  On assignment an owner first awaits its state: the poll loop calls
``restore_step`` (reads, no lock) until ``install`` hands it over with the offsets to resume at;
no record of it is processed before.

A stage never touches Kafka offsets itself: the poll loop (``streaming.consumer``) feeds it records
and runs the commit protocol (``streaming.commit``) over the steps it exposes; the input offsets
are committed in the changelog transaction of step 4.  A record below a partition's next offset is
skipped, so a stale fetch after a rebalance cannot be applied twice.

Both stages drop producer duplicates (``streaming.dedup``, one deduper per partition, logged and
checkpointed with the window state) with the same rule over the same valid records, so the user
rows, the item rows and the history agree on which copy counted.  Record headers are ignored (the
event is the value).  A batch the client cannot decode reaches ``quarantine``: the user stage
dead-letters it whole (its raw bytes, partition and offsets, and the reason), the item stage skips
it; both move their next offset past it.
"""
from __future__ import annotations

import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

from sassflow.contracts.events import EventError, parse_event_fields
from sassflow.contracts.features import ITEM_SCENARIO_STATS, USER_PROFILE, USER_SCENARIO_STATS
from sassflow.contracts.history import COLUMNS, segment_name
from streaming import metrics
from streaming.aggregate import ItemFeatures, UserFeatures, ev_from_fields
from streaming.changelog import Fenced, Restore, Restorer, StateWriter
from streaming.dead_letters import DeadLetters
from streaming.dedup import Deduper
from streaming.history import append_history, high_water
from streaming.kafka_internals import UndecodableBatch
from streaming.state import (CheckpointStore, DedupLog, checkpoint_meta, checkpoint_parts, checkpoint_root, feature_key,
                            position_key)
from streaming.topics import changelog_topic

log = logging.getLogger("sassflow.ingest")


class Stage(Protocol):
    name: str  # metric label
    topic: str
    group: str
    changelog: str  # the changelog topic
    subscribes: bool  # True: a consumer-group member; False: manual assignment of every partition

    def changelog_partitions(self, input_partitions: int) -> int:
        """How many partitions the changelog topic needs."""

    def assign(self, partitions: list[int]) -> None:
        """Take ownership: the partitions await their state (``restore_step``, ``install``)."""

    def awaiting_restore(self) -> dict[int, int]:
        """Assigned partitions whose state is not installed yet -> their assignment generation."""

    def restore_step(self, awaiting: dict[int, int]) -> list[Restore]:
        """Some restore work for ``awaiting`` (the poll loop's thread, without the lock); the finished restores."""

    def install(self, finished: list[Restore]) -> dict[int, int]:
        """Take over restored state (under the lock); returns the offset to resume each partition at."""

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

    def log_state(self, partitions: list[int] | None) -> dict[int, int]:
        """Commit step 4: the state changes and the input offsets, in one changelog transaction per
        owner; returns the offsets now committed."""

    def save_cache(self, partitions: list[int] | None) -> None:
        """Commit step 5: the local checkpoint of every owner whose changelog moved."""

    def close(self) -> None: ...


@dataclass
class OwnerLog:
    """A state owner's side of its changelog: the producer, the changelog end after its last commit,
    the end its local checkpoint matches, and the input offsets the changelog holds."""

    writer: StateWriter
    end: int
    cached_end: int | None
    logged: dict[int, int]  # input partition -> next offset on the changelog ({}: all of it to be written)

    @classmethod
    def restored(cls, r: Restore, positions: dict[int, dict]) -> "OwnerLog":
        logged = {} if r.plan.relog else {p: pos["next_offset"] for p, pos in positions.items()}
        return cls(r.writer, r.end, r.end if r.plan.source == "cache" else None, logged)

    def add_changes(self, features, dedups: dict[int, tuple[Deduper, DedupLog]], positions: dict[int, dict]) -> None:
        """Add the records since the last call to the next transaction."""
        self.writer.add(self.changes(features, dedups, positions))

    def changes(self, features, dedups: dict[int, tuple[Deduper, DedupLog]], positions: dict[int, dict]) -> list:
        """The records since the last call: changed keys, new and expired dedup ids, moved positions."""
        records = [(feature_key(k), v) for k, v in features.snapshot.changes()]
        for dedup, dedup_log in dedups.values():
            records += dedup_log.changes(dedup)
        state_changed = bool(records)
        return records + [(position_key(p), json.dumps(pos, separators=(",", ":"))) for p, pos in positions.items()
                          if state_changed or self.logged.get(p) != pos["next_offset"]]

    def commit(self, input_topic: str, offsets: dict[int, int], group: str) -> None:
        """The transaction of the records added since the last one, with the input ``offsets``."""
        if self.writer.unsent:
            self.end = self.writer.commit(input_topic, offsets, group)
            self.logged = dict(offsets)

    def save_cache(self, ckpt: CheckpointStore, name: str, topic: str, owner: int, positions: dict[int, dict],
                   features, dedup_logs: dict[int, DedupLog]) -> None:
        """The local checkpoint, when the changelog moved since the last one and holds all of the state."""
        behind = any(self.logged.get(p) != pos["next_offset"] for p, pos in positions.items())
        if self.cached_end == self.end or self.writer.unsent or features.snapshot.dirty or behind or not self.logged:
            return
        ckpt.save(name, checkpoint_meta(topic, owner, self.end, positions, int(time.time() * 1000)),
                  **checkpoint_parts(features, dedup_logs))
        self.cached_end = self.end


def item_group(settings, shard: int, shards: int) -> str:
    """The consumer group of one item-stage shard (its committed offsets show its lag)."""
    return f"{settings.kafka.consumer_group}.items.{shard}of{shards}"


def user_changelog(settings) -> str:
    """The user stage's changelog topic: a partition per input partition."""
    return changelog_topic(settings.kafka.consumer_group, UserStage.name)


def item_changelog(settings, shards: int | None = None) -> str:
    """The item stages' changelog topic: a partition per shard (K shards split items by ``item_id % K``,
    so another K is another state, on another topic)."""
    return changelog_topic(settings.kafka.consumer_group, f"items-of-{shards or settings.streaming.item_shards}")


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
    dedup_log: DedupLog
    changelog: OwnerLog
    history_hw: int
    pending: list = field(default_factory=list)  # history rows not yet on disk
    touched: set = field(default_factory=set)

    def position(self) -> dict:
        return {"next_offset": self.next_offset, "watermark": self.watermark, "dedup_newest_ms": self.dedup.newest_ms}


class UserStage:
    name = "user"
    subscribes = True

    def __init__(self, settings, writer):
        self.s = settings
        self.topic = settings.kafka.events_topic
        self.group = settings.kafka.consumer_group
        self.changelog = user_changelog(settings)
        self.writer = writer
        self.dead_letters = DeadLetters(settings, self.topic)
        self.ckpt = CheckpointStore(checkpoint_root(settings, self.group, self.topic))
        self.restorer = Restorer(settings, self.changelog, self.name, self.ckpt)
        self.parts: dict[int, UserPartition] = {}
        self.committer = ThreadPoolExecutor(8, thread_name_prefix="changelog-commit")  # 8 transactions at once
        self.awaiting: dict[int, int] = {}  # partition -> assignment generation, until its state is installed
        self.generations = 0
        self.scenarios = set(settings.scenarios)

    def changelog_partitions(self, input_partitions: int) -> int:
        return input_partitions  # changelog partition p holds the state of input partition p

    def assign(self, partitions: list[int]) -> None:
        for p in partitions:
            if p not in self.parts and p not in self.awaiting:
                self.generations += 1
                self.awaiting[p] = self.generations

    def awaiting_restore(self) -> dict[int, int]:
        return dict(self.awaiting)

    def restore_step(self, awaiting: dict[int, int]) -> list[Restore]:
        finished = self.restorer.step(awaiting, lambda p: f"p{p}")
        for r in finished:
            r.state = self._restored(r)  # the heavy part, before install takes the lock
        return finished

    def install(self, finished: list[Restore]) -> dict[int, int]:
        seeks = {}
        for r in finished:
            p = r.partition
            if self.awaiting.get(p) != r.generation:  # revoked meanwhile
                r.writer.close()
                continue
            del self.awaiting[p]
            self.parts[p] = part = r.state
            self.dead_letters.forget(p)
            seeks[p] = part.next_offset
            self.restorer.finished(r, {p: part.next_offset})
        return seeks

    def _restored(self, r: Restore) -> UserPartition:
        p, image = r.partition, r.image
        users = UserFeatures(self.s.scenarios)
        users.load_json(image.features)
        if not r.plan.relog:
            users.snapshot.changes()  # on the changelog already: only later changes are logged
        pos = image.position(p)
        return UserPartition(pos["next_offset"], pos["watermark"], users,
                             Deduper.from_json(image.dedup_json(p), self.s.streaming.dedup_horizon_ms),
                             image.dedup_log(p, logged=not r.plan.relog), OwnerLog.restored(r, {p: pos}),
                             high_water(self.s.streaming.offline_dir, self.topic, p))

    def revoke(self, partitions: list[int]) -> None:
        for p in partitions:
            self.awaiting.pop(p, None)
            self.dead_letters.forget(p)  # what was not delivered is the next owner's to redo
            part = self.parts.pop(p, None)
            if part is not None:
                part.changelog.writer.close()

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

    def log_state(self, partitions: list[int] | None) -> dict[int, int]:
        """The partitions' changes are taken from their state here; their transactions run concurrently
        (each mostly waits for its own producer and the broker)."""
        owned = {p: self.parts[p] for p in self._owned(partitions)}
        for p, part in owned.items():
            part.changelog.add_changes(part.features, {p: (part.dedup, part.dedup_log)}, {p: part.position()})
        running = {p: self.committer.submit(part.changelog.commit, self.topic, {p: part.next_offset}, self.group)
                   for p, part in owned.items()}
        failures = {p: f.exception() for p, f in running.items() if f.exception() is not None}
        for p, exc in failures.items():
            if isinstance(exc, Fenced):  # another consumer opened it: a rebalance this one has not seen yet
                log.warning("partition %d: another consumer took its state over (%s); restoring it again", p, exc)
                self.revoke([p])  # what is not committed is redone by whoever restores it
                self.generations += 1
                self.awaiting[p] = self.generations  # paused and restored again, unless the group revokes it
        failed = next((exc for exc in failures.values() if not isinstance(exc, Fenced)), None)
        if failed is not None:
            raise failed  # retried with the records kept unsent
        return {p: part.next_offset for p, part in owned.items() if p not in failures}

    def save_cache(self, partitions: list[int] | None) -> None:
        for p in self._owned(partitions):
            part = self.parts[p]
            part.changelog.save_cache(self.ckpt, f"p{p}", self.changelog, p, {p: part.position()}, part.features,
                                      {p: part.dedup_log})

    def close(self) -> None:
        self.revoke(list(self.parts))
        self.committer.shutdown()
        self.restorer.close()
        self.dead_letters.close()

    def _owned(self, partitions: list[int] | None) -> list[int]:
        return sorted(p for p in (self.parts if partitions is None else partitions) if p in self.parts)


class ItemStage:
    name = "item"
    subscribes = False

    def __init__(self, settings, writer, shard: int, shards: int, group: str | None = None,
                 changelog: str | None = None, features=None):
        """``group``, ``changelog`` and ``features`` default to the item shard's; another stage of the
        same shape (``streaming.recall_stage``) passes its own."""
        self.s = settings
        self.topic = settings.kafka.events_topic
        self.shard, self.shards = shard, shards
        self.group = group or item_group(settings, shard, shards)
        self.changelog = changelog or item_changelog(settings, shards)
        self.writer = writer
        self.ckpt = CheckpointStore(checkpoint_root(settings, self.group, self.topic))
        self.restorer = Restorer(settings, self.changelog, self.name, self.ckpt)
        self.features = ItemFeatures() if features is None else features
        self.next_offset: dict[int, int] = {}
        self.dedup: dict[int, Deduper] = {}
        self.dedup_logs: dict[int, DedupLog] = {}
        self.owner: OwnerLog | None = None  # the shard's changelog side, once its state is installed
        self.awaiting: dict[int, int] = {}
        self.touched: set = set()
        self.scenarios = set(settings.scenarios)

    def changelog_partitions(self, input_partitions: int) -> int:
        return self.shards  # changelog partition k holds shard k's state (every input partition's part of it)

    def assign(self, partitions: list[int]) -> None:
        if self.owner is not None:
            raise RuntimeError("an item shard is assigned its partitions once")
        self.awaiting.update({p: 1 for p in partitions})

    def awaiting_restore(self) -> dict[int, int]:
        return dict(self.awaiting)

    def restore_step(self, awaiting: dict[int, int]) -> list[Restore]:
        return self.restorer.step({self.shard: 1} if awaiting else {}, lambda _: "state")

    def install(self, finished: list[Restore]) -> dict[int, int]:
        seeks: dict[int, int] = {}
        for r in finished:  # the shard's one restore
            image, horizon = r.image, self.s.streaming.dedup_horizon_ms
            self.features.load_json(image.features)
            if not r.plan.relog:
                self.features.snapshot.changes()  # on the changelog already: only later changes are logged
            positions = {p: image.position(p) for p in sorted(set(self.awaiting) | set(image.positions))}
            for p, pos in positions.items():
                self.next_offset[p] = pos["next_offset"]
                self.dedup[p] = Deduper.from_json(image.dedup_json(p), horizon)
                self.dedup_logs[p] = image.dedup_log(p, logged=not r.plan.relog)
            self.owner = OwnerLog.restored(r, positions)
            seeks = {p: self.next_offset[p] for p in self.awaiting}
            self.awaiting.clear()
            self.restorer.finished(r, seeks)
        return seeks

    def revoke(self, partitions: list[int]) -> None:
        pass  # manual assignment: never revoked

    def process(self, partition: int, records) -> int:
        if partition not in self.next_offset:
            return 0
        applied = 0
        nxt = self.next_offset[partition]
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

    def log_state(self, partitions: list[int] | None) -> dict[int, int]:
        """Raises ``Fenced`` when a newer producer holds the shard's transactional id (``run_stage``
        decides whether to take the shard over again)."""
        if self.owner is None:
            return {}
        self.owner.add_changes(self.features, {p: (self.dedup[p], self.dedup_logs[p]) for p in self.dedup},
                               self._positions())
        self.owner.commit(self.topic, dict(self.next_offset), self.group)
        return dict(self.next_offset)

    def save_cache(self, partitions: list[int] | None) -> None:
        if self.owner is not None:
            self.owner.save_cache(self.ckpt, "state", self.changelog, self.shard, self._positions(), self.features,
                                  self.dedup_logs)

    def _positions(self) -> dict[int, dict]:
        return {p: {"next_offset": o, "watermark": 0, "dedup_newest_ms": self.dedup[p].newest_ms}
                for p, o in self.next_offset.items()}

    def close(self) -> None:
        if self.owner is not None:
            self.owner.writer.close()
        self.restorer.close()
