"""The offline history: every valid event once, as hive-partitioned parquet.

``<offline_dir>/events/date=<UTC date of event_time>/<segment>.parquet`` with the columns of
``SCHEMA``.  The ingest consumers write it (``streaming.history``); the replay, the training-set
builder and the backfills read it.  A segment written by a consumer is named after the Kafka
offsets it covers (``segment_name``), which makes appends idempotent.
"""
from __future__ import annotations

from pathlib import Path

import pyarrow as pa

SCHEMA = pa.schema([
    ("event_id", pa.string()), ("user_id", pa.int64()), ("item_id", pa.int64()),
    ("scenario", pa.string()), ("event_type", pa.string()), ("event_time", pa.int64()),
    ("dwell_ms", pa.int64()), ("kafka_partition", pa.int32()), ("kafka_offset", pa.int64()),
])
COLUMNS = SCHEMA.names
# The event columns (without the Kafka bookkeeping): what sources and the training set carry.
EVENT_COLUMNS = COLUMNS[:7]


def events_dir(offline_dir) -> Path:
    return Path(offline_dir) / "events"


def segment_name(topic: str, partition: int, first: int, last: int) -> str:
    return f"{topic}~p{partition}~{first}~{last}"


def segment_last_offset(name: str, topic: str, partition: int) -> int | None:
    """The last offset of a segment file name of ``topic``/``partition`` (None for other files)."""
    prefix = f"{topic}~p{partition}~"
    if not (name.startswith(prefix) and name.endswith(".parquet")):
        return None
    return int(name[len(prefix):-len(".parquet")].split("~")[1])
