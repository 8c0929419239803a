"""Writing and reading the offline history (layout and columns: ``sassflow.contracts.history``).

Idempotent appends: the consumer names each file after the offsets it covers
(``<topic>~p<partition>~<first>~<last>.parquet``, written to a temp name and renamed, so a file
is all or nothing) and, before appending, drops every offset at or below the partition's high
water mark found on disk.  Replaying the same offsets after a crash therefore writes nothing
twice, whatever the batch boundaries are on the second run.
"""
from __future__ import annotations

import os
import uuid
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from sassflow.contracts.history import COLUMNS, SCHEMA, events_dir, segment_last_offset


def _utc_dates(event_time: pd.Series) -> pd.Series:
    # format each distinct day once: strftime per row cost more than the parquet write
    days = event_time.to_numpy() // 86_400_000
    names = {d: pd.Timestamp(int(d) * 86_400_000, unit="ms", tz="UTC").strftime("%Y-%m-%d") for d in set(days.tolist())}
    return pd.Series([names[d] for d in days.tolist()], index=event_time.index)


def append_history(offline_dir, df: pd.DataFrame, name: str | None = None) -> list[Path]:
    """Append rows (one file per UTC date, each written atomically).  ``name`` makes the write
    idempotent: a second append under the same name replaces the file with the same rows."""
    if df.empty:
        return []
    df = df.copy()
    for col in ("kafka_partition", "kafka_offset"):
        if col not in df:
            df[col] = -1
    df["dwell_ms"] = df["dwell_ms"].astype("Int64")
    name = name or uuid.uuid4().hex
    written = []
    for date, part in df.groupby(_utc_dates(df["event_time"]), sort=True):
        folder = events_dir(offline_dir) / f"date={date}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{name}.parquet"
        tmp = folder / f".{name}.{os.getpid()}.tmp"
        pq.write_table(pa.Table.from_pandas(part[COLUMNS], schema=SCHEMA, preserve_index=False), tmp)
        os.replace(tmp, path)
        written.append(path)
    return written


def high_water(offline_dir, topic: str, partition: int) -> int:
    """The last offset of ``topic``/``partition`` already in the history (-1 if none)."""
    best = -1
    root = events_dir(offline_dir)
    if not root.exists():
        return best
    for folder in root.iterdir():
        if not folder.is_dir():
            continue
        for entry in os.scandir(folder):
            last = segment_last_offset(entry.name, topic, partition)
            if last is not None:
                best = max(best, last)
    return best


def read_history(offline_dir, start_ms: int | None = None, end_ms: int | None = None,
                 scenarios: list[str] | None = None) -> pd.DataFrame:
    """Events with start_ms <= event_time < end_ms, deduplicated by event_id, sorted by event_time
    (ties by kafka partition and offset, so the order is reproducible)."""
    import pyarrow.dataset as ds

    root = events_dir(offline_dir)
    files = sorted(str(p) for p in root.glob("date=*/*.parquet")) if root.exists() else []
    if files:
        flt = None
        for cond in ([ds.field("event_time") >= start_ms] if start_ms is not None else []) + \
                    ([ds.field("event_time") < end_ms] if end_ms is not None else []) + \
                    ([ds.field("scenario").isin(list(scenarios))] if scenarios else []):
            flt = cond if flt is None else flt & cond
        table = ds.dataset(files, schema=SCHEMA, format="parquet").to_table(filter=flt)
    else:
        table = SCHEMA.empty_table()
    df = table.to_pandas()
    df["dwell_ms"] = df["dwell_ms"].astype("Int64")
    df = df.sort_values(["event_time", "kafka_partition", "kafka_offset"], kind="stable")
    return df.drop_duplicates("event_id", keep="first").reset_index(drop=True)


def time_range(offline_dir) -> tuple[int, int] | None:
    """(oldest, newest) event_time in the history, None when it holds no event (reads that column only:
    the retrain DAG asks it to place its window before snapshotting anything)."""
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    root = events_dir(offline_dir)
    files = sorted(str(p) for p in root.glob("date=*/*.parquet")) if root.exists() else []
    if not files:
        return None
    times = ds.dataset(files, schema=SCHEMA, format="parquet").to_table(columns=["event_time"])["event_time"]
    if len(times) == 0:
        return None
    bounds = pc.min_max(times)
    return int(bounds["min"].as_py()), int(bounds["max"].as_py())
