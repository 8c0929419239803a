"""The item catalogue stream: its topics, its consumer stage, its offline history, and the
catalogues of the two event sources.

* ``ensure_catalog_topics`` -- the items topic (compacted: the latest version of every item stays on
  it, so a reader from the beginning sees the whole catalogue) and its dead-letter topic.
* ``CatalogStage`` -- a ``streaming.stages.Stage`` over the items topic: validates each record
  (``sassflow.contracts.catalog.parse_item``), dead-letters the bad ones with the reason header, and
  appends the valid ones to the offline catalogue history (idempotent by offsets, as the event
  history).  ``run_catalog_stage`` runs it with the ingest's poll loop and commit protocol.
* ``read_catalog`` -- the latest version of every item in the history (what the retrain trains the
  content tower on and puts in the next bundle).
* ``movielens_catalog`` / ``synthetic_catalog`` -- ``ItemEvent``s for ``sassflow produce --catalog``.
  The synthetic items carry a generated poster whose colour encodes their fine category, which their
  title and tags do not name (they only name the coarse group), so the image's share of the content
  tower's quality is measurable.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd

from sassflow.contracts.catalog import (
    ITEM_COLUMNS, ITEM_SCHEMA, EventError, ItemEvent, encode_image, item_row, items_dir, parse_item,
)
from sassflow.contracts.history import segment_last_offset, segment_name
from sassflow.contracts.recall import read_item_tags, write_item_tags
from streaming.dead_letters import DeadLetters


def ensure_catalog_topics(settings) -> None:
    """Create the items topic (compacted, keyed by item id) and its dead-letter topic if missing."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    from streaming.topics import ensure_topics

    k = settings.kafka
    admin = KafkaAdminClient(**k.client_kwargs())
    try:
        if k.items_topic not in set(admin.list_topics()):
            try:
                admin.create_topics([NewTopic(k.items_topic, k.items_partitions, k.replication_factor,
                                              topic_configs={"cleanup.policy": "compact"})])
            except TopicAlreadyExistsError:
                pass
    finally:
        admin.close()
    ensure_topics(settings, {k.items_topic: k.items_partitions, k.items_dlq_topic: 1})  # waits until ready


def catalog_group(settings) -> str:
    return f"{settings.kafka.consumer_group}.catalog"


# --------------------------------------------------------------------------- offline history

def append_items(offline_dir, rows: list[dict], name: str) -> Path:
    """Write one segment of catalogue rows atomically (a second write under ``name`` replaces it)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = items_dir(offline_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path, tmp = folder / f"{name}.parquet", folder / f".{name}.{os.getpid()}.tmp"
    pq.write_table(pa.Table.from_pylist(rows, schema=ITEM_SCHEMA), tmp)
    os.replace(tmp, path)
    return path


def items_high_water(offline_dir, topic: str, partition: int) -> int:
    """The last offset of ``topic``/``partition`` already in the catalogue history (-1 if none)."""
    folder = items_dir(offline_dir)
    if not folder.exists():
        return -1
    lasts = [segment_last_offset(e.name, topic, partition) for e in os.scandir(folder)]
    return max([o for o in lasts if o is not None], default=-1)


def read_catalog(offline_dir, until_ms: int | None = None) -> pd.DataFrame:
    """The latest version of each item with ``event_time < until_ms`` (all when None), one row per
    item (``ITEM_COLUMNS``), sorted by item id."""
    import pyarrow.dataset as ds

    folder = items_dir(offline_dir)
    files = sorted(str(p) for p in folder.glob("*.parquet")) if folder.exists() else []
    if not files:
        return ITEM_SCHEMA.empty_table().to_pandas()
    flt = ds.field("event_time") < until_ms if until_ms is not None else None
    df = ds.dataset(files, schema=ITEM_SCHEMA, format="parquet").to_table(filter=flt).to_pandas()
    df = df.sort_values(["item_id", "event_time", "kafka_partition", "kafka_offset"], kind="stable")
    return df.drop_duplicates("item_id", keep="last").reset_index(drop=True)


# --------------------------------------------------------------------------- the stage

@dataclass
class CatalogPartition:
    next_offset: int
    history_hw: int
    pending: list = field(default_factory=list)  # history rows not yet on disk


@dataclass
class _HistoryPlan:
    source: str = "history"


@dataclass
class HistoryResume:
    """A catalogue partition resumed where the offline history ends (its only state)."""

    partition: int
    history_hw: int
    started: float = field(default_factory=time.perf_counter)
    records: int = 0
    plan: _HistoryPlan = field(default_factory=_HistoryPlan)

    @property
    def resumes_at(self) -> dict[int, int]:
        return {self.partition: self.history_hw + 1}


class CatalogStage:
    """Validate catalogue records, dead-letter the bad ones, append the good ones to the history.

    Its state is where the catalogue history ends (segments are named after the offsets they cover,
    in the shared offline store): any host resumes a partition right after it, so it needs no
    changelog of its own; dead letters a replay would send again are skipped by their replay guard."""

    name = "catalog"
    subscribes = True
    changelog = None  # the history is the state

    def __init__(self, settings):
        self.s = settings
        self.topic = settings.kafka.items_topic
        self.group = catalog_group(settings)
        self.dead_letters = DeadLetters(settings, self.topic, settings.kafka.items_dlq_topic)
        self.parts: dict[int, CatalogPartition] = {}
        self.awaiting: dict[int, int] = {}
        self.tags: dict[int, list[str]] = {}  # tags of the items applied since the last online write

    def changelog_partitions(self, input_partitions: int) -> int:
        return 0

    def assign(self, partitions: list[int]) -> None:
        self.awaiting.update({p: 1 for p in partitions if p not in self.parts})

    def awaiting_restore(self) -> dict[int, int]:
        return dict(self.awaiting)

    def restore_step(self, awaiting: dict[int, int]) -> list[HistoryResume]:
        return [HistoryResume(p, self._handled_up_to(p)) for p in awaiting]

    def _handled_up_to(self, partition: int) -> int:
        """The last offset handled: the history's end, then the bad records right after it that are
        already on the dead-letter topic (a good record after them is not in the history yet)."""
        last = items_high_water(self.s.streaming.offline_dir, self.topic, partition)
        dead_lettered = self.dead_letters.already_sent(partition, last + 1)
        while last + 1 in dead_lettered:
            last += 1
        return last

    def install(self, finished: list[HistoryResume]) -> dict[int, int]:
        for r in finished:
            self.parts[r.partition] = CatalogPartition(r.history_hw + 1, r.history_hw)
            self.awaiting.pop(r.partition, None)
        return {r.partition: r.history_hw + 1 for r in finished}

    def revoke(self, partitions: list[int]) -> None:
        for p in partitions:
            self.parts.pop(p, None)
            self.awaiting.pop(p, None)
            self.dead_letters.forget(p)

    def quarantine(self, batch) -> bool:
        part = self.parts.get(batch.partition)
        if part is None:
            return False
        self.dead_letters.send_batch(batch)
        part.next_offset = max(part.next_offset, batch.next_offset)
        return True

    def process(self, partition: int, records) -> int:
        part = self.parts.get(partition)
        if part is None:
            return 0
        applied = 0
        for r in records:
            if r.offset < part.next_offset:
                continue
            part.next_offset = r.offset + 1
            try:
                item = parse_item(r.value, self.s.scenarios, self.s.kafka.max_item_bytes)
            except EventError as err:
                self.dead_letters.send(r, err)
                continue
            if r.offset > part.history_hw:
                part.pending.append(item_row(item, partition, r.offset))
            self.tags[item.item_id] = list(item.tags)
            applied += 1
        return applied

    def flush_outputs(self) -> None:
        self.dead_letters.flush()

    def append_history(self, partitions: list[int] | None) -> None:
        for p in self._owned(partitions):
            part = self.parts[p]
            if part.pending:
                first, last = part.pending[0]["kafka_offset"], part.pending[-1]["kafka_offset"]
                append_items(self.s.streaming.offline_dir, part.pending, segment_name(self.topic, p, first, last))
                part.history_hw, part.pending = last, []

    def write_online(self) -> None:
        """The recall tag catalog (``sassflow.contracts.recall``) follows the catalogue: the tag index
        and the tag branch read it (the service reads the items themselves from the compacted topic)."""
        if self.tags:
            tags = dict(read_item_tags(self.s.recall.catalog_dir))
            tags.update(self.tags)
            write_item_tags(self.s.recall.catalog_dir, tags)
            self.tags = {}

    def log_state(self, partitions: list[int] | None) -> dict[int, int]:
        """Nothing to log: the history appended in step 2 is where a restart resumes."""
        return {p: self.parts[p].next_offset for p in self._owned(partitions)}

    def save_cache(self, partitions: list[int] | None) -> None:
        pass

    def close(self) -> None:
        self.dead_letters.close()

    def _owned(self, partitions: list[int] | None) -> list[int]:
        return sorted(p for p in (self.parts if partitions is None else partitions) if p in self.parts)


# --------------------------------------------------------------------------- the sources' catalogues

def movielens_catalog(dataset) -> Iterator[ItemEvent]:
    """A ``sassflow.datasets.Dataset``'s movies: title, genres as tags, year, the movie's scenario.
    ``event_time`` is the movie's first rating (a movie enters the catalogue before its first
    impression), or the first rating of the dataset for a movie never rated."""
    first = {}
    for frame in dataset.iter_event_frames():
        seen = frame.groupby("item_id")["event_time"].min()
        for item, t in seen.items():
            first.setdefault(int(item), int(t))
    default = min(first.values()) if first else 946_684_800_000
    movies = dataset.movies.assign(first_ms=[first.get(int(i), default) for i in dataset.movies["item_id"]])
    for row in movies.sort_values(["first_ms", "item_id"], kind="stable").itertuples(index=False):
        year = int(row.year) if pd.notna(row.year) and 1800 <= int(row.year) <= 2100 else None
        tags = [g for g in str(row.genres).split("|") if g and g != "nan"][:32]
        yield ItemEvent.model_construct(
            event_id=f"ml-item-{int(row.item_id)}", item_id=int(row.item_id), title=str(row.title)[:512] or "?",
            tags=tags, year=year, attributes=None, scenarios=[str(dataset.item_scenario[int(row.item_id)])],
            image=None, event_time=int(row.first_ms))


def split_catalog_at(items, t_ms: int) -> tuple[list[ItemEvent], list[ItemEvent]]:
    """(items in the catalogue before ``t_ms``, items that arrive from then on): e.g. a replay's
    first part gets the first list, its second part the new items."""
    items = list(items)
    return [it for it in items if it.event_time < t_ms], [it for it in items if it.event_time >= t_ms]


GROUP_WORDS = (("crimson", "ember", "blaze", "scarlet", "forge", "torch", "lava", "flare"),
               ("harbor", "tide", "coral", "drift", "marina", "reef", "gull", "anchor"),
               ("meadow", "fern", "grove", "willow", "moss", "thicket", "bloom", "orchard"),
               ("quartz", "circuit", "neon", "pixel", "vector", "laser", "signal", "orbit"),
               ("velvet", "lullaby", "ballad", "sonnet", "waltz", "serenade", "opal", "silk"))
FILLER_WORDS = ("the", "last", "night", "story", "return", "of", "a", "new", "day", "road", "home", "city")
# poster colours: the fine category within a group (category % len(PALETTE)); titles never name it
PALETTE = np.array([[220, 40, 40], [40, 180, 60], [50, 70, 220], [230, 200, 40]], dtype=np.float64)


def synthetic_group(category: np.ndarray) -> np.ndarray:
    """The coarse group a title and tags name (the fine category is ``category % len(PALETTE)`` within it)."""
    return (np.asarray(category) // len(PALETTE)) % len(GROUP_WORDS)


def synthetic_poster(category: int, rng: np.random.Generator, side: int = 16) -> np.ndarray:
    """A small noisy poster: background in the fine category's colour, a random light frame and noise."""
    base = PALETTE[category % len(PALETTE)] * rng.uniform(0.7, 1.0)
    img = base + rng.normal(0, 25, size=(side, side, 3))
    a, b = sorted(rng.integers(2, side - 2, size=2))
    img[a:b + 1, a:b + 1] = 0.5 * img[a:b + 1, a:b + 1] + 0.5 * rng.uniform(120, 255)
    return np.clip(img, 0, 255).astype(np.uint8)


def synthetic_catalog(source, start_ms: int | None = None, with_image: bool = True) -> Iterator[ItemEvent]:
    """A ``SyntheticSource``'s items (ids 0..n-1, shown in every scenario): title words and a tag
    name the item's coarse group, the poster's colour its fine category."""
    truth = source.truth
    rng = np.random.default_rng((source.seed, 7))
    groups = synthetic_group(truth.item_category)
    t = source.start_ms - 1 if start_ms is None else start_ms
    for item in range(len(truth.item_category)):
        g = int(groups[item])
        words = list(rng.choice(GROUP_WORDS[g], size=2, replace=False)) + [str(rng.choice(FILLER_WORDS))]
        rng.shuffle(words)
        poster = synthetic_poster(int(truth.item_category[item]), rng) if with_image else None
        yield ItemEvent.model_construct(
            event_id=f"syn-{source.seed}-item-{item}", item_id=item, title=" ".join(words).title(),
            tags=[f"group-{g}"], year=None, attributes=None, scenarios=None,
            image=encode_image(poster) if poster is not None else None, event_time=int(t))
