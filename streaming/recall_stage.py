"""The recall stage: the streaming half of the recall branches (issue #13).

One consumer (manual assignment of every partition of the events topic, like an item shard: the
structures are cross-user, so one owner sees every click) applies clicks to
``streaming.recall_structures`` and writes the rows of the keys they touched to the recall store
(``features.recall_store``) after every micro-batch, so a click is in the i2i, tag and trending rows
within a batch interval.  The commit protocol is the ingest's (``streaming.commit``): the store
rows, then the state with the offsets it covers, then the Kafka offsets; a restart restores the
state and replays exactly the records after it.

``rebuild_recall_structures`` is the batch side: the same pure code over the offline history,
written to the store (the retrain DAG's rebuild, a backfill, a lost store).
"""
from __future__ import annotations

from sassflow.contracts.events import EventError, parse_event_fields
from sassflow.contracts.recall import read_item_tags
from streaming import metrics
from streaming.aggregate import ev_from_fields
from streaming.recall_structures import APPLIED, NOT_A_CLICK, RecallParams, RecallStructures, batch_recall
from streaming.state import CheckpointStore, checkpoint_root


def recall_group(settings) -> str:
    """The recall stage's consumer group (its committed offsets show its lag)."""
    return f"{settings.kafka.consumer_group}.recall"


class RecallStage:
    name = "recall"
    subscribes = False

    def __init__(self, settings, store):
        self.s = settings
        self.topic = settings.kafka.events_topic
        self.group = recall_group(settings)
        self.store = store
        self.ckpt = CheckpointStore(checkpoint_root(settings, self.group, self.topic))
        saved = self.ckpt.load("state") or {"offsets": {}, "state": {}}
        self.next_offset = {int(p): o for p, o in saved["offsets"].items()}
        self.structures = RecallStructures(RecallParams.from_settings(settings),
                                           read_item_tags(settings.recall.catalog_dir))
        self.structures.load_json(saved["state"])
        self.fragments: dict = {}
        self.scenarios = set(settings.scenarios)

    def assign(self, partitions: list[int]) -> dict[int, int]:
        return {p: self.next_offset.setdefault(p, 0) for p in partitions}

    def revoke(self, partitions: list[int]) -> None:
        pass  # manual assignment: never revoked

    def process(self, partition: int, records) -> int:
        outcomes = [self.structures.add(ev_from_fields(d)) for d in self._new_events(partition, records)]
        for outcome in set(outcomes) - {APPLIED, NOT_A_CLICK}:
            metrics.RECALL_NOT_APPLIED.labels(outcome).inc(outcomes.count(outcome))
        return outcomes.count(APPLIED)

    def _new_events(self, partition: int, records):
        """The valid events of records past the partition's next offset (moving it along); invalid
        ones are skipped here, the user stage dead-letters them."""
        for r in records:
            if r.offset < self.next_offset.get(partition, 0):
                continue
            self.next_offset[partition] = r.offset + 1
            try:
                yield parse_event_fields(r.value, self.scenarios, self.s.kafka.max_event_bytes)
            except EventError:
                continue

    def flush_outputs(self) -> None:
        pass  # produces nothing

    def append_history(self, partitions: list[int] | None) -> None:
        pass  # the user stage writes the history

    def write_online(self) -> None:
        rows = self.structures.take_rows()
        if rows:
            self.store.write(rows)

    def save_state(self, partitions: list[int] | None) -> dict[int, int]:
        self.structures.snapshot_fragments(self.fragments)
        self.ckpt.save("state", {"topic": self.topic, "offsets": {str(p): o for p, o in self.next_offset.items()}},
                       state="{" + ",".join(self.fragments.values()) + "}")
        return dict(self.next_offset)

    def close(self) -> None:
        pass


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
    store = store or open_recall_store(settings)
    stale = set(store.keys()) - set(rows)
    keys = sorted(rows)
    for lo in range(0, len(keys), 5000):
        store.write({k: rows[k] for k in keys[lo:lo + 5000]})
    if stale:
        store.write(dict.fromkeys(sorted(stale)))
    return {"clicks": len(df), "rows": len(rows), "deleted": len(stale), "start_ms": start_ms, "end_ms": end_ms}
