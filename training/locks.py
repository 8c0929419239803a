"""The promotion lock of the model registry: one promotion at a time (a gate's read-the-champion,
decide, promote; a publish of the promoted model's bundle), across Airflow tasks, CLI commands and
hosts, whatever Airflow's concurrency settings are.

* PostgreSQL (production): a session-level advisory lock (``pg_try_advisory_lock``) on a connection
  held for the lock's lifetime.  The server drops it when that connection ends, so a killed holder
  never leaves the lock taken.
* SQLite (the embedded default): an ``flock`` on a file beside the database (a SQLite registry lives
  on one host anyway); the kernel drops it when the holder dies.

Reentrant within a thread (a gate holding the lock promotes through ``set_status``, which takes it
too), exclusive between threads and processes.
"""
from __future__ import annotations

import hashlib
import threading
import time
from contextlib import contextmanager
from pathlib import Path

POLL_S = 0.1
_held = threading.local()  # this thread's locks: key -> depth


class LockTimeout(TimeoutError):
    """Another promotion held the lock for longer than we were willing to wait."""


def _key(engine, name: str) -> str:
    return f"{engine.url.render_as_string(hide_password=True)}#{name}"


@contextmanager
def promotion_lock(engine, name: str, timeout_s: float):
    """Hold the promotion lock of model ``name`` in the registry database of ``engine``."""
    held = _held.__dict__.setdefault("depth", {})
    key = _key(engine, name)
    if key in held:  # reentry from the same thread
        held[key] += 1
        try:
            yield
        finally:
            held[key] -= 1
        return
    dialect = engine.dialect.name
    if dialect == "postgresql":
        acquire = _advisory_lock(engine, name, timeout_s)
    elif dialect == "sqlite":
        acquire = _file_lock(engine, name, timeout_s)
    else:
        raise NotImplementedError(f"no promotion lock for a {dialect} registry (PostgreSQL or SQLite)")
    with acquire:
        held[key] = 1
        try:
            yield
        finally:
            del held[key]


def advisory_key(name: str) -> int:
    """A stable signed 64-bit key for ``pg_advisory_lock`` (the same in every process and host)."""
    digest = hashlib.sha256(f"sassflow.registry.promotion:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@contextmanager
def _advisory_lock(engine, name: str, timeout_s: float):
    from sqlalchemy import text

    key = advisory_key(name)
    # AUTOCOMMIT: a session-level lock needs no transaction, and none stays "idle in transaction".
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        deadline = time.monotonic() + timeout_s
        while not conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar():
            if time.monotonic() > deadline:
                raise LockTimeout(f"the promotion lock of {name!r} stayed taken for {timeout_s:.0f} s")
            time.sleep(POLL_S)
        try:
            yield
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})


@contextmanager
def _file_lock(engine, name: str, timeout_s: float):
    import filelock

    database = engine.url.database
    if not database or database == ":memory:":
        raise ValueError("a promotion lock needs a SQLite file database, not an in-memory one")
    path = Path(database).absolute().with_name(f"{Path(database).name}.{name}.promotion.lock")
    lock = filelock.FileLock(path, timeout=timeout_s, poll_interval=POLL_S)  # a new fd: excludes other threads too
    try:
        lock.acquire()
    except filelock.Timeout:
        raise LockTimeout(f"the promotion lock of {name!r} ({path}) stayed taken for {timeout_s:.0f} s") from None
    try:
        yield
    finally:
        lock.release()
