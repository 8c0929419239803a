"""The commit protocol of a stateful stage: one function, five steps, always in this order.

1. side outputs flushed: the dead letters of the records applied so far are on the broker;
2. history appended: every applied event is in the offline history (idempotent: segments are
   named after the offsets they cover);
3. online store written: every touched key's absolute row (the same rows a replay would write);
4. state logged: per state owner (a user-stage partition, an item shard), one Kafka transaction
   holding its state changes since its last commit (records on its compacted changelog partition,
   ``streaming.state``), its input position, and the input offsets committed to the consumer
   group (``send_offsets_to_transaction``) -- visible together or not at all;
5. local checkpoint saved: the owner's state with the changelog end offset it matches, atomically
   (a cache: ``streaming.state.plan_restore``).

The changelog (step 4) is the source of truth, and the state it holds covers exactly the input
before its offsets.  A crash anywhere loses nothing and applies nothing twice: whoever owns the
partition next -- the same process after a restart, or another host -- fences the old owner's
producer (which aborts a transaction it left open), restores the state of the last committed
transaction (from the local checkpoint where it matches, else from the changelog) and replays
exactly the records after its offsets; what steps 1-3 had already written for those records is
written again, identically.  A crash between steps 4 and 5 leaves a checkpoint older than the
changelog, which a restore completes from the changelog.

Why transactions rather than an offset stored in each snapshot: compaction keeps only a key's
latest record, so after a crash between two snapshots the changelog could hold values newer than
the offsets any snapshot names, with the older values already compacted away; a transaction never
exposes records without the offsets they belong to.
"""
from __future__ import annotations

import logging
import threading
from typing import Callable

from streaming.stages import Stage

log = logging.getLogger("sassflow.ingest")


def commit_checkpoint(stage: Stage, partitions: list[int] | None = None, lock: threading.RLock | None = None,
                      attempt: Callable = lambda fn, operation: fn()) -> dict[int, int]:
    """Run the protocol for ``partitions`` (default: all the stage owns); returns the input offsets
    committed.

    Under ``lock`` (shared with the rebalance listener), steps 1-4 through ``attempt(fn, operation)``
    (the consumer's retry with backoff: a store or broker outage delays the checkpoint, it never
    skips a step).  The transaction of step 4 goes through the owners' producers, never the
    consumer's IO thread, so a listener holding the lock cannot block it.  A failed step 5 only
    leaves the checkpoint older (the changelog has the state): logged, not retried."""
    def steps_1_to_4() -> dict[int, int]:
        stage.flush_outputs()
        stage.append_history(partitions)
        stage.write_online()
        return stage.log_state(partitions)

    with lock or threading.RLock():
        offsets = attempt(steps_1_to_4, "checkpoint")
        try:
            stage.save_cache(partitions)
        except OSError as exc:
            log.warning("local checkpoint not saved (%s); the changelog holds the state", exc)
    return offsets
