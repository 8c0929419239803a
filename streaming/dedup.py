"""Event-id deduplication of one partition's stream: a producer retry that lands the same event at a
new offset is applied once.  Pure: no I/O, no clock.

The contract keys events by user, so every copy of an event lands in the same partition: one
``Deduper`` per partition, owned by whoever owns the partition's state (user stage: the partition's
owner; item stage: the shard, for every partition) and checkpointed with that state, so decisions
survive kill -9 and rebalances.

Horizon, in event time: an id is remembered while its event time is within ``horizon_ms`` of the
newest event time the deduper has admitted (``settings.streaming.dedup_horizon_ms``).  A copy is a
duplicate if its id was admitted before with an event time inside the horizon *as of that copy*.
Ids are bucketed by event hour and whole hours are dropped once they fall behind the horizon; since
the newest time only grows, dropping can never change a later decision, whatever the batch and
checkpoint boundaries were -- the live stages and a restart from any checkpoint decide alike.  A copy
of an event older than the horizon is not recognised (documented in the README).
"""
from __future__ import annotations

import json

from sassflow.contracts.features import HOUR_MS


class Deduper:
    def __init__(self, horizon_ms: int):
        self.horizon_ms = horizon_ms
        self.newest_ms = 0
        self.hour_of: dict[str, int] = {}  # event id -> event hour
        self.by_hour: dict[int, list[str]] = {}  # event hour -> ids admitted in it
        self._fragments: dict[int, str] = {}  # event hour -> its JSON (incremental snapshots)
        self._dirty: set[int] = set()

    def _first_live_hour(self) -> int:
        return (self.newest_ms - self.horizon_ms) // HOUR_MS

    def admit(self, event_id: str, event_time: int) -> bool:
        """True the first time ``event_id`` is seen within the horizon (and remember it); False for a copy."""
        first_live = self._first_live_hour()
        hour = self.hour_of.get(event_id)
        if hour is not None and hour >= first_live:
            return False
        hour = event_time // HOUR_MS
        if hour < first_live:
            return True  # older than the horizon: applied, not remembered
        self.hour_of[event_id] = hour
        self.by_hour.setdefault(hour, []).append(event_id)
        self._dirty.add(hour)
        if event_time > self.newest_ms:
            self.newest_ms = event_time
        return True

    def prune(self) -> None:
        first_live = self._first_live_hour()
        for hour in [h for h in self.by_hour if h < first_live]:
            for event_id in self.by_hour.pop(hour):
                if self.hour_of.get(event_id) == hour:
                    del self.hour_of[event_id]
            self._fragments.pop(hour, None)
            self._dirty.discard(hour)

    def snapshot_text(self) -> str:
        """The state as JSON text (prunes first; re-encodes only the hours changed since the last call)."""
        self.prune()
        for hour in self._dirty:
            self._fragments[hour] = f'"{hour}":' + json.dumps(self.by_hour[hour], separators=(",", ":"))
        self._dirty.clear()
        return '{"newest_ms":' + str(self.newest_ms) + ',"hours":{' + ",".join(self._fragments.values()) + "}}"

    @classmethod
    def from_json(cls, d: dict | None, horizon_ms: int) -> "Deduper":
        out = cls(horizon_ms)
        if d:
            out.newest_ms = d["newest_ms"]
            for hour, ids in d["hours"].items():
                out.by_hour[int(hour)] = list(ids)
                for event_id in ids:  # an id re-admitted after its old copy left the horizon: newest hour
                    out.hour_of[event_id] = max(int(hour), out.hour_of.get(event_id, int(hour)))
                out._dirty.add(int(hour))
        return out
