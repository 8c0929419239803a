"""Where the recall structures live (rows: ``sassflow.contracts.recall``): a key -> bytes store with
the embedded default (SQLite, no server) and production (Redis) behind one interface.

The streaming recall stage writes absolute rows (``None`` deletes a key) -- each key has one writer,
so a write needs no read; serving reads a handful of keys per request.  Not Feast: a row is one
opaque value read by key, which both backends answer with one round trip (SQLite ``IN``, Redis
``MGET``) and no per-feature decoding.
"""
from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Protocol

from sassflow.contracts.recall import RecallRow


class RecallStore(Protocol):
    def write(self, rows: dict[str, RecallRow | None]) -> None: ...

    def read(self, keys: list[str]) -> list[RecallRow | None]: ...

    def keys(self) -> list[str]: ...


class SqliteRecallStore:
    """One table in a SQLite file in WAL mode: the stage writes while services read."""

    blocking = True

    def __init__(self, path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with self._db() as db:
            db.execute("CREATE TABLE IF NOT EXISTS recall (key TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID")

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:  # one connection per thread: sqlite3 connections are not shared across threads
            db = self._local.db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
        return db

    def write(self, rows: dict[str, RecallRow | None]) -> None:
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany("INSERT OR REPLACE INTO recall (key, value) VALUES (?, ?)",
                           [(k, r.encode()) for k, r in rows.items() if r is not None])
            db.executemany("DELETE FROM recall WHERE key = ?", [(k,) for k, r in rows.items() if r is None])
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def read(self, keys: list[str]) -> list[RecallRow | None]:
        if not keys:
            return []
        found = dict(self._db().execute(f"SELECT key, value FROM recall WHERE key IN ({','.join('?' * len(keys))})",
                                        keys).fetchall())
        return [RecallRow.decode(found[k]) if k in found else None for k in keys]

    def keys(self) -> list[str]:
        return [k for (k,) in self._db().execute("SELECT key FROM recall ORDER BY key")]


class RedisRecallStore:
    """One Redis string per row under ``prefix``."""

    blocking = True

    def __init__(self, client, prefix: str):
        self.client, self.prefix = client, prefix

    def write(self, rows: dict[str, RecallRow | None]) -> None:
        with self.client.pipeline(transaction=False) as pipe:
            for k, r in rows.items():
                if r is None:
                    pipe.delete(self.prefix + k)
                else:
                    pipe.set(self.prefix + k, r.encode())
            pipe.execute()

    def read(self, keys: list[str]) -> list[RecallRow | None]:
        if not keys:
            return []
        return [None if v is None else RecallRow.decode(v) for v in self.client.mget([self.prefix + k for k in keys])]

    def keys(self) -> list[str]:
        n = len(self.prefix)
        return sorted(k.decode()[n:] for k in self.client.scan_iter(match=self.prefix + "*", count=1000))


class MemoryRecallStore:
    """Rows in a dict, for in-process evaluation (``bench quality``) and synthetic benchmarks."""

    blocking = False

    def __init__(self, rows: dict[str, RecallRow] | None = None):
        self.rows = dict(rows or {})

    def write(self, rows: dict[str, RecallRow | None]) -> None:
        for k, r in rows.items():
            if r is None:
                self.rows.pop(k, None)
            else:
                self.rows[k] = r

    def read(self, keys: list[str]) -> list[RecallRow | None]:
        return [self.rows.get(k) for k in keys]

    def keys(self) -> list[str]:
        return sorted(self.rows)


def open_recall_store(settings) -> SqliteRecallStore | RedisRecallStore:
    """The configured store (``settings.recall_store``)."""
    if settings.recall_store == "redis":
        from features.feast_internals import redis_from_connection_string

        return RedisRecallStore(redis_from_connection_string(settings.feast.redis_connection_string.get_secret_value()),
                                settings.recall.redis_prefix)
    return SqliteRecallStore(settings.recall.sqlite_path)


def compare_recall(store: RecallStore, expected: dict[str, RecallRow], batch: int = 1000) -> dict:
    """Every key of the store against ``expected``: {"keys", "mismatched", "missing", "extra", "examples"}."""
    stored = set(store.keys())
    out = {"keys": len(expected), "mismatched": 0, "missing": 0, "extra": len(stored - set(expected)),
           "examples": sorted(stored - set(expected))[:3]}
    keys = sorted(expected)
    for lo in range(0, len(keys), batch):
        chunk = keys[lo:lo + batch]
        for k, got in zip(chunk, store.read(chunk)):
            if got is None:
                out["missing"] += 1
            elif got != expected[k]:
                out["mismatched"] += 1
                if len(out["examples"]) < 6:
                    out["examples"].append({"key": k, "expected": expected[k].items[:5].tolist(),
                                            "got": got.items[:5].tolist()})
    return out
