"""The event contract: valid events round-trip, each kind of malformed input gets its precise error."""
import json

import pytest

from sassflow.contracts.events import Event, EventError, parse_event

SCENARIOS = ["family", "thriller", "action", "comedy", "drama"]
GOOD = {"event_id": "e1", "user_id": 7, "item_id": 42, "scenario": "drama", "event_type": "click",
        "event_time": 1_700_000_000_000, "dwell_ms": 1500, "context": {"rating": 5, "page": "home"}}


def raw(obj) -> bytes:
    return json.dumps(obj).encode()


def test_valid_event_round_trips():
    event = parse_event(raw(GOOD), SCENARIOS)
    assert event.user_id == 7 and event.scenario == "drama" and event.context == {"rating": 5, "page": "home"}
    assert parse_event(event.to_bytes(), SCENARIOS) == event
    assert event.key() == b"7"
    minimal = {k: GOOD[k] for k in ("event_id", "user_id", "item_id", "scenario", "event_type", "event_time")}
    assert parse_event(raw(minimal), SCENARIOS).dwell_ms is None


@pytest.mark.parametrize("payload, reason, fragment", [
    (b"not json at all", "not_json", "not JSON"),
    (b"\xff\xfe\x00garbage", "encoding", "not UTF-8"),
    (b"[1, 2, 3]", "not_object", "expected a JSON object, got list"),
    (raw({k: v for k, v in GOOD.items() if k != "item_id"}), "missing_field", "item_id: Field required"),
    (raw({**GOOD, "user_id": "7"}), "wrong_type", "user_id"),
    (raw({**GOOD, "user_id": 7.5}), "wrong_type", "user_id"),
    (raw({**GOOD, "event_time": True}), "wrong_type", "event_time"),
    (raw({**GOOD, "event_type": "purchase"}), "invalid_value", "event_type"),
    (raw({**GOOD, "event_time": 1_700_000_000}), "invalid_value", "event_time"),
    (raw({**GOOD, "user_id": -1}), "invalid_value", "user_id"),
    (raw({**GOOD, "scenario": "casino"}), "unknown_scenario", "'casino' is not one of"),
    (raw({**GOOD, "surprise": 1}), "unknown_field", "surprise"),
    (raw({**GOOD, "context": {"k": [1, 2]}}), "wrong_type", "context"),
    (raw({**GOOD, "context": {f"k{i}": i for i in range(40)}}), "invalid_value", "at most 32"),
    (raw({**GOOD, "event_id": "x" * 5000}), "oversized", "at most 4096"),
    (None, "not_json", "empty message"),
])
def test_malformed_events_get_precise_errors(payload, reason, fragment):
    with pytest.raises(EventError) as info:
        parse_event(payload, SCENARIOS)
    assert info.value.reason == reason
    assert fragment in info.value.message


def test_oversized_limit_is_configurable():
    body = raw(GOOD)
    with pytest.raises(EventError) as info:
        parse_event(body, SCENARIOS, max_bytes=len(body) - 1)
    assert info.value.reason == "oversized"
    assert parse_event(body, SCENARIOS, max_bytes=len(body)).event_id == "e1"


def test_event_is_immutable():
    event = Event.model_validate(GOOD)
    with pytest.raises(Exception):
        event.user_id = 8
