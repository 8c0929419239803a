"""The recall stage: the streaming half of the recall branches (issue #13).

One consumer (manual assignment of every partition of the events topic, like an item shard: the
structures are cross-user, so one owner sees every click) applies clicks to
``streaming.recall_structures`` and writes the rows of the keys they touched to the recall store
(``features.recall_store``) after every micro-batch, so a click is in the i2i, tag and trending rows
within a batch interval.  Its state is an item shard's: the commit protocol (``streaming.commit``)
writes the store rows, then the state changes and the offsets in one changelog transaction (its own
compacted topic, ``<group>-recall-changelog``); any host restores it from there.

``rebuild_recall_structures`` is the batch side: the same pure code over the offline history,
written to the store (the retrain DAG's rebuild, a backfill, a lost store).
"""
from __future__ import annotations

from sassflow.contracts.events import EventError, parse_event_fields
from sassflow.contracts.recall import read_item_tags
from streaming import metrics
from streaming.aggregate import ev_from_fields
from streaming.recall_structures import APPLIED, NOT_A_CLICK, RecallParams, RecallStructures, batch_recall
from streaming.stages import ItemStage
from streaming.topics import changelog_topic


def recall_group(settings) -> str:
    """The recall stage's consumer group (its committed offsets show its lag)."""
    return f"{settings.kafka.consumer_group}.recall"


class RecallStage(ItemStage):
    """An item shard's shape (one owner of every partition, state on its own changelog topic, the
    event-id dedup of every valid event), over the recall structures instead of the item features."""

    name = "recall"

    def __init__(self, settings, store):
        super().__init__(settings, None, shard=0, shards=1, group=recall_group(settings),
                         changelog=changelog_topic(settings.kafka.consumer_group, self.name),
                         features=RecallStructures(RecallParams.from_settings(settings),
                                                   read_item_tags(settings.recall.catalog_dir)))
        self.store = store
        self.pending: dict = {}  # rows taken from the structures, not yet written
        self.resync = False  # after a restore: the next write makes the store equal the restored state

    def changelog_partitions(self, input_partitions: int) -> int:
        return 1

    def process(self, partition: int, records) -> int:
        if partition not in self.next_offset:
            return 0
        outcomes = [self.features.add(ev_from_fields(d)) for d in self._new_events(partition, records)]
        for outcome in set(outcomes) - {APPLIED, NOT_A_CLICK}:
            metrics.RECALL_NOT_APPLIED.labels(outcome).inc(outcomes.count(outcome))
        return outcomes.count(APPLIED)

    def _new_events(self, partition: int, records):
        """The valid, first-seen events of records past the partition's next offset (moving it
        along); invalid ones are skipped here, the user stage dead-letters them."""
        dedup = self.dedup[partition]
        for r in records:
            if r.offset < self.next_offset[partition]:
                continue
            self.next_offset[partition] = r.offset + 1
            try:
                d = parse_event_fields(r.value, self.scenarios, self.s.kafka.max_event_bytes)
            except EventError:
                continue
            if dedup.admit(d["event_id"], d["event_time"]):
                yield d
            else:
                metrics.DUPLICATES.labels(self.name).inc()

    def install(self, finished) -> dict[int, int]:
        restored = any(r.image.positions for r in finished)  # not a first start
        seeks = super().install(finished)
        self.resync = self.resync or restored
        return seeks

    def write_online(self) -> None:
        """The rows of the keys touched since the last write; after a restore, every row of the
        restored state and a delete for every stored key it has no row for (the store may hold rows
        of a state newer or older than the one restored: rows are derived, the state decides)."""
        if self.resync:
            replace_rows(self.store, self.features.all_rows())
            self.pending, self.resync = {}, False
            return
        self.pending.update(self.features.take_rows())  # kept until written: a failed write is retried
        if self.pending:
            self.store.write(self.pending)
        self.pending = {}


def replace_rows(store, rows: dict) -> int:
    """Make ``store`` hold exactly ``rows`` (in chunks; keys not among them are deleted); returns the
    number of keys deleted."""
    stale = set(store.keys()) - set(rows)
    keys = sorted(rows)
    for lo in range(0, len(keys), 5000):
        store.write({k: rows[k] for k in keys[lo:lo + 5000]})
    if stale:
        store.write(dict.fromkeys(sorted(stale)))
    return len(stale)


def rebuild_recall_structures(settings, start_ms: int | None = None, end_ms: int | None = None,
                              store=None) -> dict:
    """Recompute every recall row from the history's events in [start_ms, end_ms) and make the
    store hold exactly those rows (keys not among them are deleted)."""
    from features.recall_store import open_recall_store
    from streaming.history import read_history
    from streaming.replay import frame_to_evs

    df = read_history(settings.streaming.offline_dir, start_ms, end_ms)
    df = df[df["event_type"] == "click"]
    rows = batch_recall(frame_to_evs(df), RecallParams.from_settings(settings),
                        read_item_tags(settings.recall.catalog_dir))
    deleted = replace_rows(store or open_recall_store(settings), rows)
    return {"clicks": len(df), "rows": len(rows), "deleted": deleted, "start_ms": start_ms, "end_ms": end_ms}
