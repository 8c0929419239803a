"""The impression/click event contract.

On the wire an event is one compact JSON object, Kafka key = ``str(user_id)``
(so one user's events keep their order within a partition)::

    {"event_id": "ml-1-1193-978300760-c", "user_id": 1, "item_id": 1193,
     "scenario": "drama", "event_type": "click", "event_time": 978300760000,
     "dwell_ms": null, "context": {"rating": 5}}

``parse_event`` never raises anything but ``EventError``; its ``reason`` is a
short machine-readable code (it becomes the dead-letter header) and its message
says exactly what was wrong.
"""
from __future__ import annotations

import json
import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

EventType = Literal["impression", "click"]

# 2000-01-01 .. 2100-01-01 in ms: anything outside is a unit mistake (seconds, µs).
MIN_EVENT_TIME_MS = 946_684_800_000
MAX_EVENT_TIME_MS = 4_102_444_800_000
MAX_ID = 2**63 - 1
MAX_CONTEXT_KEYS = 32

# An id as a JSON value: an integer, nothing else ("7", 7.0 and true are refused), 0 .. 2^63-1.
# Every parser of ids (this contract, the HTTP API's bodies) validates through this one type.
Id = Annotated[int, Field(ge=0, le=MAX_ID, strict=True)]

_DIGITS = re.compile(r"[0-9]+")  # ASCII only: str.isdigit and int() also take other scripts' digits


def parse_digits(text: str, max_value: int = MAX_ID) -> int:
    """A non-negative integer written as text (an id or a count in a query string): ASCII digits
    only -- no sign, space, underscore or non-ASCII digit, all of which ``int()`` would accept.
    Raises ``ValueError`` with a message that does not repeat the input."""
    if not _DIGITS.fullmatch(text):
        raise ValueError("must be written with ASCII digits 0-9 only (no sign, space or underscore)")
    if len(text) > len(str(max_value)) or int(text) > max_value:
        raise ValueError(f"must be at most {max_value}")
    return int(text)


class EventError(ValueError):
    """A malformed event. ``reason`` is one of: oversized, encoding, not_json,
    not_object, missing_field, wrong_type, invalid_value, unknown_field,
    unknown_scenario."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"


class Event(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    event_id: str = Field(min_length=1, max_length=128)
    user_id: Id
    item_id: Id
    scenario: str = Field(min_length=1, max_length=64)
    event_type: EventType
    event_time: int = Field(ge=MIN_EVENT_TIME_MS, le=MAX_EVENT_TIME_MS, description="epoch milliseconds")
    dwell_ms: int | None = Field(default=None, ge=0, le=86_400_000)
    context: dict[str, str | int | float | bool] | None = None

    @field_validator("context")
    @classmethod
    def _small_context(cls, v):
        if v is not None and len(v) > MAX_CONTEXT_KEYS:
            raise ValueError(f"context has {len(v)} keys, at most {MAX_CONTEXT_KEYS} allowed")
        return v

    def to_bytes(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()

    def key(self) -> bytes:
        return str(self.user_id).encode()


_PYDANTIC_REASON = {
    "missing": "missing_field",
    "extra_forbidden": "unknown_field",
    "literal_error": "invalid_value",
    "greater_than_equal": "invalid_value",
    "less_than_equal": "invalid_value",
    "string_too_short": "invalid_value",
    "string_too_long": "invalid_value",
    "value_error": "invalid_value",
}


def _describe(exc: ValidationError) -> EventError:
    errors = exc.errors(include_url=False)
    first = errors[0]
    reason = _PYDANTIC_REASON.get(first["type"], "wrong_type")
    parts = []
    for e in errors:
        loc = ".".join(str(p) for p in e["loc"]) or "event"
        got = "" if e["type"] == "missing" else f" (got {json.dumps(e.get('input'), default=str)[:60]})"
        parts.append(f"{loc}: {e['msg']}{got}")
    return EventError(reason, "; ".join(parts))


def _decode(raw: bytes | None, max_bytes: int) -> dict:
    """The byte-level checks: size, UTF-8, JSON, an object."""
    if raw is None:
        raise EventError("not_json", "empty message (null value)")
    if len(raw) > max_bytes:
        raise EventError("oversized", f"message is {len(raw)} bytes, at most {max_bytes} allowed")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EventError("encoding", f"not UTF-8: {exc}") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise EventError("not_json", f"not JSON: {exc.msg} at position {exc.pos}") from None
    if not isinstance(obj, dict):
        raise EventError("not_object", f"expected a JSON object, got {type(obj).__name__}")
    return obj


def _validate(obj: dict, scenarios) -> Event:
    """The full (pydantic) validation: the reference, and the source of every precise error."""
    try:
        event = Event.model_validate(obj)
    except ValidationError as exc:
        raise _describe(exc) from None
    if event.scenario not in scenarios:
        raise EventError(
            "unknown_scenario",
            f"scenario {event.scenario!r} is not one of {sorted(scenarios)}",
        )
    return event


_REQUIRED = frozenset(("event_id", "user_id", "item_id", "scenario", "event_type", "event_time"))
_ALLOWED = _REQUIRED | {"dwell_ms", "context"}
_CONTEXT_TYPES = (str, int, float, bool)


def _plainly_valid(obj: dict, scenarios) -> bool:
    """True only when ``Event.model_validate(obj)`` would accept ``obj`` unchanged (same values,
    same types) and its scenario is known.

    The ingest consumers parse every record; pydantic costs more than everything else they do
    per event, and nearly every record is valid.  So the common case is checked here with exact
    types (``type(x) is int`` excludes bool, as strict mode does); anything unusual -- including
    every invalid event -- returns False and takes the pydantic path, which alone builds errors.
    Keep in step with ``Event``'s fields.
    """
    if not (obj.keys() >= _REQUIRED and obj.keys() <= _ALLOWED):
        return False
    eid, uid, iid, scen = obj["event_id"], obj["user_id"], obj["item_id"], obj["scenario"]
    t = obj["event_time"]
    if not (type(eid) is str and 1 <= len(eid) <= 128
            and type(uid) is int and 0 <= uid <= MAX_ID
            and type(iid) is int and 0 <= iid <= MAX_ID
            and type(scen) is str and 1 <= len(scen) <= 64 and scen in scenarios
            and type(obj["event_type"]) is str and obj["event_type"] in ("impression", "click")
            and type(t) is int and MIN_EVENT_TIME_MS <= t <= MAX_EVENT_TIME_MS):
        return False
    dwell = obj.get("dwell_ms")
    if dwell is not None and not (type(dwell) is int and 0 <= dwell <= 86_400_000):
        return False
    ctx = obj.get("context")
    if ctx is not None and not (type(ctx) is dict and len(ctx) <= MAX_CONTEXT_KEYS
                                and all(type(v) in _CONTEXT_TYPES for v in ctx.values())):
        return False
    return True


def parse_event(raw: bytes | None, scenarios: list[str] | set[str], max_bytes: int = 4096) -> Event:
    """Validate one wire message. Raises ``EventError`` with a precise message."""
    obj = _decode(raw, max_bytes)
    if _plainly_valid(obj, scenarios):
        # what model_validate would build (same values, same fields_set), without re-checking
        return Event.model_construct(**obj)
    return _validate(obj, scenarios)


def parse_event_fields(raw: bytes | None, scenarios: list[str] | set[str], max_bytes: int = 4096) -> dict:
    """``parse_event`` without building an ``Event``: the valid event's fields as a plain dict
    (optional fields absent when the message omits them).  Same checks, same errors.  For the
    ingest consumers, which only read a few fields of every record."""
    obj = _decode(raw, max_bytes)
    if _plainly_valid(obj, scenarios):
        return obj
    return _validate(obj, scenarios).model_dump(exclude_unset=True)
