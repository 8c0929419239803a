"""The fast path of event parsing gives exactly what the pydantic path gives: the same Event
(values, types, fields_set) for a valid message, the same EventError for an invalid one."""
import json

import pytest

from sassflow.contracts.events import EventError, _decode, _validate, parse_event, parse_event_fields

SCENARIOS = ["family", "thriller", "action", "comedy", "drama"]
GOOD = {"event_id": "e1", "user_id": 7, "item_id": 42, "scenario": "drama", "event_type": "click",
        "event_time": 1_700_000_000_000, "dwell_ms": 1500, "context": {"rating": 5, "page": "home"}}
MINIMAL = {k: GOOD[k] for k in ("event_id", "user_id", "item_id", "scenario", "event_type", "event_time")}

CASES = [GOOD, MINIMAL, {**MINIMAL, "dwell_ms": None, "context": None}, {**GOOD, "context": {}},
         {**GOOD, "context": {"a": 1.5, "b": True, "c": "x", "d": 0, "e": float("inf")}},
         {**GOOD, "event_type": "impression", "dwell_ms": 0}, {**GOOD, "dwell_ms": 86_400_000},
         {**GOOD, "dwell_ms": 86_400_001}, {**GOOD, "dwell_ms": -1}, {**GOOD, "dwell_ms": True},
         {**GOOD, "dwell_ms": 1.0}, {**GOOD, "user_id": 2**63 - 1}, {**GOOD, "user_id": 2**63},
         {**GOOD, "user_id": True}, {**GOOD, "item_id": 3.0}, {**GOOD, "item_id": None},
         {**GOOD, "event_id": ""}, {**GOOD, "event_id": "x" * 128}, {**GOOD, "event_id": "x" * 129},
         {**GOOD, "event_id": 5}, {**GOOD, "scenario": ""}, {**GOOD, "scenario": "casino"},
         {**GOOD, "scenario": ["drama"]}, {**GOOD, "event_type": ["click"]}, {**GOOD, "event_type": "Click"},
         {**GOOD, "event_time": 946_684_800_000}, {**GOOD, "event_time": 946_684_799_999},
         {**GOOD, "event_time": 4_102_444_800_001}, {**GOOD, "event_time": 1.7e12},
         {**GOOD, "context": {"k": [1]}}, {**GOOD, "context": {"k": None}}, {**GOOD, "context": [1]},
         {**GOOD, "context": {f"k{i}": i for i in range(32)}}, {**GOOD, "context": {f"k{i}": i for i in range(33)}},
         {**GOOD, "extra": 1}, {k: v for k, v in GOOD.items() if k != "event_time"}, {}]


def _reference(raw: bytes):
    """The pydantic-only path: an Event, or (reason, message) of the error."""
    try:
        return _validate(_decode(raw, 4096), SCENARIOS)
    except EventError as err:
        return err.reason, err.message


@pytest.mark.parametrize("obj", CASES)
def test_fast_path_matches_pydantic(obj):
    raw = json.dumps(obj).encode()
    want = _reference(raw)
    try:
        got = parse_event(raw, SCENARIOS)
    except EventError as err:
        assert (err.reason, err.message) == want
        with pytest.raises(EventError) as info:
            parse_event_fields(raw, SCENARIOS)
        assert (info.value.reason, info.value.message) == want
        return
    assert got == want and got.model_fields_set == want.model_fields_set
    assert all(type(getattr(got, f)) is type(getattr(want, f)) for f in type(want).model_fields)
    assert got.to_bytes() == want.to_bytes()
    assert parse_event_fields(raw, SCENARIOS) == want.model_dump(exclude_unset=True)


def test_synthetic_stream_parses_identically():
    from streaming.sources import SyntheticSource

    for e in SyntheticSource(n_users=50, n_items=80, n_events=300, scenarios=SCENARIOS, seed=1).events():
        raw = e.to_bytes()
        assert parse_event(raw, SCENARIOS) == _reference(raw) == e
