"""The commit protocol of a stateful stage: one function, five steps, always in this order.

1. side outputs flushed: the dead letters of the records applied so far are on the broker;
2. history appended: every applied event is in the offline history (idempotent: segments are
   named after the offsets they cover);
3. online store written: every touched key's absolute row (the same rows a replay would write);
4. state saved: window state + the offsets it covers, atomically (``streaming.state``);
5. offsets committed to Kafka.

A crash between any two steps loses nothing and applies nothing twice: on restart the stage
restores the state of step 4 and replays exactly the records after its offsets; what steps 1-3 had
already written for those records is written again, identically.  The committed Kafka offsets
(step 5) only show lag to monitoring; the saved state is the source of truth.
"""
from __future__ import annotations

import threading
from typing import Callable

from streaming.stages import Stage


def commit_checkpoint(stage: Stage, commit_offsets: Callable[[dict[int, int]], None],
                      partitions: list[int] | None = None, lock: threading.RLock | None = None,
                      attempt: Callable = lambda fn, operation: fn()) -> dict[int, int]:
    """Run the protocol for ``partitions`` (default: all the stage owns).

    Steps 1-4 run under ``lock`` (shared with the rebalance listener), through ``attempt(fn,
    operation)`` (the consumer's retry with backoff: a store outage delays the checkpoint, it never
    skips a step).  Step 5 runs outside the lock when the caller does not hold it, since a blocking
    commit waits for kafka-python's IO thread, which may be waiting for that lock in a listener."""
    def steps_1_to_4() -> dict[int, int]:
        stage.flush_outputs()
        stage.append_history(partitions)
        stage.write_online()
        return stage.save_state(partitions)

    with lock or threading.RLock():
        offsets = attempt(steps_1_to_4, "checkpoint")
    if offsets:
        commit_offsets(offsets)
    return offsets
