"""The recall-structure contract: the branch names, the keys and value format of the structures the
streaming job stores for serving, and the item-tag catalog they are built from.

Structures (one row per key; built by ``streaming.recall_structures``, stored by
``features.recall_store``, read by ``serving.recall``):

* ``i2i|<item>|<scenario>``  -- items co-clicked with ``item`` whose click was in ``scenario``;
* ``tag|<tag>|<scenario>``   -- the tag's items clicked in ``scenario``, by live decayed clicks;
* ``trending|<scenario>``    -- the scenario's items by live decayed clicks.

Every score is a **log-weight**: ``log(sum over the counted events of exp(rate * event_tile_ms))``
with ``rate = ln 2 / half_life_ms`` (0: no decay, the plain log count).  Decay is then evaluated at
read time, as of any time ``now``: the decayed count is ``exp(score - rate * now)``; the order of
one row never depends on ``now``, and a stored value is a function of the set of events only (no
clock of the writer enters it).  ``norm`` is the log-weight of the key's own clicks (i2i: the
trigger item's clicks, for normalisation; other rows: 0).

The item-tag catalog (``<recall.catalog_dir>/item_tags.parquet``: one row per (item_id, tag)) is
item metadata, not an event: MovieLens genres, the synthetic source's categories.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SASS, I2I, TAGS, TRENDING, CONTENT, POPULAR = "sass", "i2i", "tags", "trending", "content", "popular"
# The branches a request can select (``popular``, the bundle's cold-start list, is the last resort
# of every request and is not selectable).  ``content`` answers users who clicked items the bundle
# does not hold yet (new catalogue items, by their content vectors: serving.content).
BRANCHES = (SASS, I2I, TAGS, TRENDING, CONTENT)

_HEADER = struct.Struct("<dI")  # norm (float64), n


def i2i_key(item_id: int, scenario: str) -> str:
    return f"{I2I}|{item_id}|{scenario}"


def tag_key(tag: str, scenario: str) -> str:
    return f"{TAGS}|{tag}|{scenario}"


def trending_key(scenario: str) -> str:
    return f"{TRENDING}|{scenario}"


@dataclass
class RecallRow:
    """One stored structure row: items best first, their log-weights, the key's own log-weight."""

    items: np.ndarray  # int64 [n]
    scores: np.ndarray  # float64 [n], log-weights (see the module docstring)
    norm: float = 0.0

    def encode(self) -> bytes:
        items = np.ascontiguousarray(self.items, dtype="<i8")
        scores = np.ascontiguousarray(self.scores, dtype="<f8")
        if len(items) != len(scores):
            raise ValueError(f"{len(items)} items for {len(scores)} scores")
        return _HEADER.pack(float(self.norm), len(items)) + items.tobytes() + scores.tobytes()

    @classmethod
    def decode(cls, data: bytes) -> "RecallRow":
        norm, n = _HEADER.unpack_from(data, 0)
        start = _HEADER.size
        if len(data) != start + 16 * n:
            raise ValueError(f"a recall row of {n} items has {len(data)} bytes")
        items = np.frombuffer(data, dtype="<i8", count=n, offset=start)
        scores = np.frombuffer(data, dtype="<f8", count=n, offset=start + 8 * n)
        return cls(items, scores, norm)

    def __eq__(self, other) -> bool:
        return (isinstance(other, RecallRow) and self.norm == other.norm
                and np.array_equal(self.items, other.items) and np.array_equal(self.scores, other.scores))


# --------------------------------------------------------------------------- the item-tag catalog

ITEM_TAGS_FILE = "item_tags.parquet"


def item_tags_path(catalog_dir) -> Path:
    return Path(catalog_dir) / ITEM_TAGS_FILE


def write_item_tags(catalog_dir, tags: dict[int, list[str]]) -> Path:
    """Write the item -> tags map atomically (temp file + rename)."""
    import os

    import pyarrow as pa
    import pyarrow.parquet as pq

    path = item_tags_path(catalog_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    pairs = [(int(i), str(t)) for i, ts in sorted(tags.items()) for t in ts]
    table = pa.table({"item_id": pa.array([p[0] for p in pairs], pa.int64()),
                      "tag": pa.array([p[1] for p in pairs], pa.string())})
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)
    return path


def read_item_tags(catalog_dir) -> dict[int, tuple[str, ...]]:
    """The item -> tags map ({} when there is no catalog: the tag branch then finds nothing)."""
    import pyarrow.parquet as pq

    path = item_tags_path(catalog_dir)
    if not path.exists():
        return {}
    table = pq.read_table(path)
    out: dict[int, list[str]] = {}
    for item, tag in zip(table.column("item_id").to_pylist(), table.column("tag").to_pylist()):
        out.setdefault(item, []).append(tag)
    return {i: tuple(ts) for i, ts in out.items()}
