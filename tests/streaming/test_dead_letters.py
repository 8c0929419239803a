"""Dead letters across a broker outage, on a broker of the test's own (killed and restarted): a
delivery or read-back that cannot finish raises within its deadline and keeps the letters; once the
broker is back each letter lands exactly once, and a new owner replaying the same records sends
none of them again."""
from __future__ import annotations

import threading
import time
from collections import Counter
from types import SimpleNamespace

import pytest

from cli.local.kafka import LocalKafka
from sassflow.contracts.events import EventError
from streaming.dead_letters import DeadLetters
from streaming.topics import ensure_topics
from tests.conftest import TEST_KAFKA_PORT, make_settings
from tests.streaming.test_ingest import _dead_letters


@pytest.fixture(scope="module")
def broker_of_this_module(tmp_path_factory):
    port = TEST_KAFKA_PORT + 20  # beside the session broker's and the broker-failure cluster's ports
    settings = make_settings(tmp_path_factory.mktemp("dead_letters"),
                             local_kafka={"port": port, "controller_port": port + 1, "heap": "256m"},
                             kafka={"bootstrap_servers": f"127.0.0.1:{port}", "partitions": 2},
                             streaming={"metrics_port": 0, "dead_letter_timeout_s": 3.0})
    broker = LocalKafka(settings)
    broker.start()
    yield settings, broker
    broker.stop()


@pytest.fixture()
def own_broker(broker_of_this_module, request):
    """The module's broker, with a dead-letter topic of the test's own."""
    settings, broker = broker_of_this_module
    settings = settings.model_copy(deep=True)
    settings.kafka.dlq_topic = f"dlq.{request.node.name}"
    ensure_topics(settings)
    return settings, broker


def _record(partition: int, offset: int):
    return SimpleNamespace(partition=partition, offset=offset, key=b"k", value=f"bad {partition}/{offset}".encode())


def _queue(letters: DeadLetters, *records) -> None:
    for partition, offset in records:
        letters.send(_record(partition, offset), EventError("not_json", "not json"))


def _flush_in_time(letters: DeadLetters, within_s: float = 60.0):
    """``letters.flush()``; returns the exception it raised (None on success).  Fails the test when it
    does not return within ``within_s``: the pinned client's own flush waits for ever in an outage."""
    out = {}

    def run():
        try:
            letters.flush()
            out["error"] = None
        except Exception as exc:  # noqa: BLE001 -- what it raised is the result
            out["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(within_s)
    assert "error" in out, f"flush did not return within {within_s} s"
    return out["error"]


def _flush_until_delivered(letters: DeadLetters, attempts: int = 30) -> None:
    """The consumer's retry, in short: flush until it succeeds."""
    for _ in range(attempts):
        if _flush_in_time(letters) is None:
            return
        time.sleep(1.0)
    raise AssertionError(f"dead letters still queued after {attempts} attempts: {letters.queued}")


def _on_topic(settings) -> Counter:
    """(source partition, source offset) -> how many letters of it the dead-letter topic holds."""
    headers = [dict(r.headers) for r in _dead_letters(settings)]
    return Counter((int(h["source_partition"]), int(h["source_offset"])) for h in headers)


def test_dead_letters_ride_out_a_broker_outage_and_land_once(own_broker):
    settings, broker = own_broker
    letters = DeadLetters(settings, settings.kafka.events_topic)
    _queue(letters, (0, 5), (0, 9))
    assert _on_topic(settings) == Counter()  # queued only: the poll loop does no broker I/O per record
    _flush_until_delivered(letters)
    assert letters.queued == 0

    broker.kill()
    _queue(letters, (0, 12), (1, 3))  # partition 1 has no replay guard yet: it must read the topic back
    error = _flush_in_time(letters)
    assert error is not None, "a flush with the broker down reported success"
    assert letters.queued == 2  # nothing acknowledged: both kept for the retry

    broker.start()
    _flush_until_delivered(letters)
    assert letters.queued == 0
    assert _on_topic(settings) == Counter({(0, 5): 1, (0, 9): 1, (0, 12): 1, (1, 3): 1})

    # a new owner after a crash replays from before the letters: only the new record's letter is sent
    replay = DeadLetters(settings, settings.kafka.events_topic)
    _queue(replay, (0, 9), (0, 12), (0, 20), (1, 3))
    _flush_until_delivered(replay)
    assert _on_topic(settings) == Counter({(0, 5): 1, (0, 9): 1, (0, 12): 1, (1, 3): 1, (0, 20): 1})
    letters.close()
    replay.close()


def test_a_revoked_partition_drops_its_undelivered_letters(own_broker):
    settings, _ = own_broker
    letters = DeadLetters(settings, settings.kafka.events_topic)
    _queue(letters, (0, 1), (1, 2))
    letters.forget(1)  # revoked before the checkpoint: the next owner redoes partition 1's records
    _flush_until_delivered(letters)
    assert _on_topic(settings) == Counter({(0, 1): 1})
    letters.close()
