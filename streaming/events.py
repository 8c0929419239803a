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
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

EventType = Literal["impression", "click"]

# 2000-01-01 .. 2100-01-01 in ms: anything outside is a unit mistake (seconds, µs).
MIN_EVENT_TIME_MS = 946_684_800_000
MAX_EVENT_TIME_MS = 4_102_444_800_000
MAX_ID = 2**63 - 1
MAX_CONTEXT_KEYS = 32


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
    user_id: int = Field(ge=0, le=MAX_ID)
    item_id: int = Field(ge=0, le=MAX_ID)
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


def parse_event(raw: bytes | None, scenarios: list[str] | set[str], max_bytes: int = 4096) -> Event:
    """Validate one wire message. Raises ``EventError`` with a precise message."""
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
