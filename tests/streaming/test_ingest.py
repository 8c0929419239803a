"""The ingest pipeline against the real broker and real online stores (SQLite and Redis).

Every test ends with the same check: the online store equals a batch recomputation (the pure
aggregation over exactly the valid events produced), the history holds every valid event once,
and the dead-letter topic holds exactly the poison messages.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import signal
import threading
import time

import pyarrow.dataset as ds
import pytest
from kafka import KafkaConsumer, TopicPartition

from features.store import OnlineWriter, apply_definitions
from streaming.topics import ensure_topics
from streaming.history import events_dir, read_history
from streaming.ingest import _stage_main
from streaming.produce import make_producer, produce_events
from streaming.replay import compare_online, recompute
from streaming.sources import SyntheticSource, events_frame

POISON = [
    b"not json at all",
    b'{"event_id": "x1", "user_id": 1}',
    b'{"event_id": "x2", "user_id": 1, "item_id": 2, "scenario": "space", "event_type": "click", "event_time": 1700000000000}',
    b"\xff\xfe\x00 binary",
    b"[1, 2, 3]",
    b'{"event_id": "x3", "user_id": 1, "item_id": 2, "scenario": "drama", "event_type": "click", "event_time": 1700000000}',
]


def _tuned(settings, **feast):
    s = settings.model_copy(deep=True)
    s.streaming.batch_max_events = 200
    s.streaming.batch_max_ms = 100
    s.streaming.checkpoint_interval_ms = 300  # many checkpoints, so a kill lands between two
    for k, v in feast.items():
        setattr(s.feast, k, v)
    ensure_topics(s)
    apply_definitions(s)
    return s


def _events(n, seed):
    return list(SyntheticSource(n_users=150, n_items=200, n_events=n, seed=seed, mean_gap_ms=20_000.0).events())


def _produce(settings, events, rate=None, poison_every=None, duplicate_every=None, **producer_kw):
    """Produce events (and poison messages in between) with kafka-python; returns the poison sent.
    ``duplicate_every``: a producer-side duplicate (the same event at a later offset, as a retry
    leaves it) of every n-th event, sent a few events later."""
    producer = make_producer(settings, **{"linger_ms": 5, **producer_kw})
    sent, start, retries = [], time.monotonic(), []
    for i, e in enumerate(events):
        producer.send(settings.kafka.events_topic, key=e.key(), value=e.to_bytes(),
                      headers=[("trace", str(i).encode())])  # headers are accepted and ignored
        if duplicate_every and i % duplicate_every == 0:
            retries.append(e)
        if retries and i % 5 == 4:
            dup = retries.pop(0)
            producer.send(settings.kafka.events_topic, key=dup.key(), value=dup.to_bytes())
        if poison_every and i % poison_every == poison_every // 2:
            bad = POISON[len(sent) % len(POISON)] + f" #{len(sent)}".encode() if len(sent) % len(POISON) in (0, 3) \
                else POISON[len(sent) % len(POISON)]
            producer.send(settings.kafka.events_topic, key=b"poison", value=bad)
            sent.append(bad)
        if rate:
            delay = start + (i + 1) / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
    for dup in retries:
        producer.send(settings.kafka.events_topic, key=dup.key(), value=dup.to_bytes())
    producer.flush()
    producer.close()
    return sent


def _spawn(settings, stage="user", index=0, until_idle=None):
    p = mp.get_context("spawn").Process(target=_stage_main, args=(settings, stage, 0, 1, index, None, until_idle))
    p.start()
    return p


def _join_all(procs, timeout=120):
    """Wait for consumers that stop by themselves (--until-idle); kill any left on failure."""
    try:
        for p in procs:
            p.join(timeout)
            assert p.exitcode == 0
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()


def _in_background(fn, *args, **kw):
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("value", fn(*args, **kw)), daemon=True)
    t.start()
    return t, out


def _wait_for_checkpoint(settings, timeout=300):  # consumer start-up (imports) is slow on a loaded machine
    root = settings.streaming.checkpoint_dir
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if root.exists() and any(root.rglob("p*.json")) and any(root.rglob("state.json")):
            return
        time.sleep(0.1)
    raise AssertionError("no checkpoint written")


def _dead_letters(settings):
    c = KafkaConsumer(**settings.kafka.client_kwargs(), group_id=None, enable_auto_commit=False)
    tp = TopicPartition(settings.kafka.dlq_topic, 0)
    c.assign([tp])
    c.seek_to_beginning(tp)
    end = c.end_offsets([tp])[tp]
    out = []
    while c.position(tp) < end:
        for recs in c.poll(timeout_ms=500).values():
            out.extend(recs)
    c.close()
    return out


def _assert_exact(settings, events, poison=()):
    writer = OnlineWriter(apply_definitions(settings))
    expected = recompute(events_frame(events), settings.scenarios)
    report = compare_online(writer, expected)
    assert report["mismatched"] == 0 and report["missing"] == 0, report
    assert report["keys"] == len(expected.user_scenario) + len(expected.user_profile) + len(expected.item_scenario)
    # the batch driver over the offline history gives the very rows the live consumers wrote
    replayed = recompute(read_history(settings.streaming.offline_dir), settings.scenarios)
    assert replayed == expected
    raw = ds.dataset(str(events_dir(settings.streaming.offline_dir)), format="parquet").to_table().to_pandas()
    assert len(raw) == len(events) and raw["event_id"].is_unique  # every valid event, once
    dlq = _dead_letters(settings)
    assert sorted(r.value for r in dlq) == sorted(poison)
    for r in dlq:
        h = dict(r.headers)
        assert h["reason"] and h["error"] and h["source_topic"] == settings.kafka.events_topic.encode()


def _scrape(port: int) -> dict:
    import urllib.request

    try:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback, never a proxy
        text = opener.open(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    except OSError:
        return {}
    out: dict = {}  # metric name -> value summed over labels
    for line in text.splitlines():
        if line.startswith("sassflow_"):
            name, value = line.rsplit(" ", 1)
            base = name.split("{")[0]
            out[base] = out.get(base, 0) + float(value)
    return out


def test_cli_ingest_dead_letters_poison_counts_late_events_and_exports_metrics(kafka):
    """`sassflow ingest` end to end: poison -> DLQ (exactly them), late events applied and counted."""
    import subprocess
    import sys

    from sassflow.processes import free_port

    s = _tuned(kafka)
    events = _events(1500, seed=11)
    oldest = min(e.event_time for e in events)
    late = [e.model_copy(update={"event_id": f"late-{i}", "event_time": oldest - 2 * 3_600_000})
            for i, e in enumerate(events[:7])]
    poison = _produce(s, events, poison_every=100, duplicate_every=50)
    _produce(s, late)
    port = free_port()
    env = dict(os.environ, SASSFLOW_STATE_DIR=str(s.state_dir), SASSFLOW_STREAMING__METRICS_PORT=str(port),
               SASSFLOW_STREAMING__CHECKPOINT_INTERVAL_MS="300",
               SASSFLOW_KAFKA__BOOTSTRAP_SERVERS=s.kafka.bootstrap_servers,
               SASSFLOW_KAFKA__EVENTS_TOPIC=s.kafka.events_topic, SASSFLOW_KAFKA__DLQ_TOPIC=s.kafka.dlq_topic,
               SASSFLOW_KAFKA__CONSUMER_GROUP=s.kafka.consumer_group)
    proc = subprocess.Popen([sys.executable, "-m", "cli.main", "ingest", "--processes", "1", "--until-idle", "4"],
                            env=env, cwd=str(s.state_dir.parent))
    metrics = {}
    try:
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            m = _scrape(port)
            if m.get("sassflow_ingest_events_in_total", 0) >= len(events) + len(late) + len(poison) + len(events[::50]):
                metrics = m
            time.sleep(0.3)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert metrics["sassflow_ingest_events_applied_total"] == len(events) + len(late)
    assert metrics["sassflow_ingest_dead_lettered_total"] == len(poison)
    assert metrics["sassflow_ingest_late_events_total"] == len(late)
    assert metrics["sassflow_ingest_duplicates_total"] == len(events[::50])  # counted, applied once
    assert "sassflow_ingest_batch_seconds_count" in metrics and "sassflow_ingest_freshness_seconds_count" in metrics
    assert "sassflow_ingest_consumer_lag" in metrics
    _assert_exact(s, events + late, poison)
    reasons = {dict(r.headers)["reason"] for r in _dead_letters(s)}
    assert {b"not_json", b"missing_field", b"unknown_scenario", b"encoding", b"not_object", b"invalid_value"} <= reasons


def test_kill_9_mid_stream_then_restart_is_exact(kafka):
    s = _tuned(kafka)
    events = _events(3000, seed=12)
    procs = [_spawn(s, "user"), _spawn(s, "item", 1)]
    try:
        _wait_for_checkpoint(s)
        producer, sent = _in_background(_produce, s, events, rate=1000, poison_every=250, duplicate_every=9)
        time.sleep(1.5)
        for p in procs:
            os.kill(p.pid, signal.SIGKILL)  # no flush, no commit, no leave
            p.join()
        assert producer.is_alive(), "kill came after the stream ended; slow the producer down"
    except BaseException:
        for p in procs:
            p.kill()
        raise
    _join_all([_spawn(s, "user", until_idle=3), _spawn(s, "item", 1, until_idle=3)])
    producer.join()
    _assert_exact(s, events, sent["value"])


def test_two_consumers_one_leaves_mid_stream_is_exact(kafka):
    s = _tuned(kafka)
    events = _events(3000, seed=13)
    leaver = _spawn(s, "user", 0)
    procs = [_spawn(s, "user", 1, until_idle=5), _spawn(s, "item", 2, until_idle=5)]
    try:
        _wait_for_checkpoint(s)
        # slow enough that the leaver (drain, commit, leave) is gone while events still flow, on a loaded machine
        producer, sent = _in_background(_produce, s, events, rate=400, duplicate_every=11)
        time.sleep(1.5)
        os.kill(leaver.pid, signal.SIGTERM)  # drains, commits and leaves: the other one takes over
        leaver.join(60)
        assert leaver.exitcode == 0 and producer.is_alive()
        producer.join()
    finally:
        _join_all([leaver, *procs])
    _assert_exact(s, events)


def test_redis_outage_mid_run_recovers_exactly(kafka, redis_server, capfd):
    s = _tuned(kafka, online_store="redis")
    s.feast.redis_connection_string = type(s.feast.redis_connection_string)(redis_server.connection_string)
    s.feast.data_dir = s.state_dir / "feast-redis"
    apply_definitions(s)
    events = _events(3000, seed=14)
    procs = [_spawn(s, "user", until_idle=4), _spawn(s, "item", 1, until_idle=4)]
    try:
        _wait_for_checkpoint(s)
        producer, sent = _in_background(_produce, s, events, rate=600)
        time.sleep(1.0)
        redis_server.stop()
        assert producer.is_alive()
        err, deadline = "", time.monotonic() + 30
        while "online write failed" not in err and time.monotonic() < deadline:
            time.sleep(0.5)  # the consumers retry with backoff and commit nothing meanwhile
            err += capfd.readouterr().err
        assert "online write failed" in err  # the outage was felt
        time.sleep(1.0)
        redis_server.start()
        producer.join()
    finally:
        _join_all(procs)
    _assert_exact(s, events)
