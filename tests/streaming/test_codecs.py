"""Events from any Kafka client: every compression codec ingests exactly, and a batch the consumer
cannot decode is quarantined to the dead-letter topic (partition, offsets, reason) while ingestion
goes on -- never a crash loop."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
from kafka.record import MemoryRecords

from streaming.kafka_internals import check_pinned_kafka
from tests.streaming.test_ingest import _assert_exact, _dead_letters, _events, _join_all, _produce, _spawn, _tuned

CODECS = [None, "gzip", "snappy", "lz4", "zstd"]


def test_the_pinned_kafka_python_internals_are_in_place():
    assert check_pinned_kafka() == []


def test_every_codec_with_headers_and_duplicates_ingests_exactly(kafka):
    s = _tuned(kafka)
    events = _events(2500, seed=21)
    chunk = len(events) // len(CODECS)
    for k, codec in enumerate(CODECS):  # five producers, as clients in five languages would be
        _produce(s, events[k * chunk:(k + 1) * chunk if k < len(CODECS) - 1 else None], duplicate_every=13,
                 compression_type=codec, linger_ms=20)
    _join_all([_spawn(s, "user", until_idle=3), _spawn(s, "item", 1, until_idle=3)])
    _assert_exact(s, events)


def _consumer_without_lz4(settings, stage: str, index: int) -> subprocess.Popen:
    """A consumer process in which the lz4 library is not importable: exactly kafka-python's
    "Libraries for lz4 compression codec not found"."""
    code = ("import sys; sys.modules['lz4'] = sys.modules['lz4.frame'] = None\n"
            "from sassflow.settings import Settings\n"
            "from streaming.ingest import _stage_main\n"
            f"_stage_main(Settings(), {stage!r}, 0, 1, {index}, None, 4.0)\n")
    env = dict(os.environ, SASSFLOW_STATE_DIR=str(settings.state_dir), SASSFLOW_STREAMING__METRICS_PORT="0",
               SASSFLOW_STREAMING__CHECKPOINT_INTERVAL_MS="300", SASSFLOW_STREAMING__BATCH_MAX_EVENTS="200",
               SASSFLOW_KAFKA__BOOTSTRAP_SERVERS=settings.kafka.bootstrap_servers, SASSFLOW_LOG_LEVEL="ERROR",
               SASSFLOW_KAFKA__EVENTS_TOPIC=settings.kafka.events_topic, SASSFLOW_KAFKA__DLQ_TOPIC=settings.kafka.dlq_topic,
               SASSFLOW_KAFKA__CONSUMER_GROUP=settings.kafka.consumer_group)
    return subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.PIPE, text=True)


def test_an_undecodable_batch_is_quarantined_and_ingestion_goes_on(kafka):
    s = _tuned(kafka)
    s.kafka.partitions = 1  # one partition: the bad batch sits between good ones
    s.kafka.events_topic += "-one"
    s = _tuned(s)
    events = _events(900, seed=22)
    good_before, lz4_batch, good_after = events[:400], events[400:450], events[450:]
    _produce(s, good_before, compression_type="gzip")
    _produce(s, lz4_batch, compression_type="lz4", linger_ms=500, batch_size=1 << 20)  # one batch
    _produce(s, good_after)
    procs = [_consumer_without_lz4(s, "user", 0), _consumer_without_lz4(s, "item", 1)]
    try:
        for p in procs:
            assert p.wait(120) == 0, p.stderr.read()[-3000:]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    errors = "".join(p.stderr.read() for p in procs)
    assert "Libraries for lz4 compression codec not found" in errors and "quarantined records 400..449" in errors
    (dead,) = _dead_letters(s)
    h = dict(dead.headers)
    assert h["reason"] == b"undecodable_batch" and h["source_partition"] == b"0"
    assert (h["source_offset"], h["source_last_offset"]) == (b"400", b"449")
    # the quarantined bytes are the batch itself: a client with lz4 reads the 50 events back
    batch = MemoryRecords(dead.value).next_batch()
    assert [r.value for r in batch] == [e.to_bytes() for e in lz4_batch]
    _assert_exact(s, good_before + good_after, poison=[dead.value])


@pytest.mark.parametrize("codec", ["snappy", "lz4", "zstd"])
def test_codec_libraries_are_installed(codec):
    """Declared dependencies (pyproject.toml): kafka-python finds every codec."""
    import kafka.codec

    assert getattr(kafka.codec, f"has_{codec}")()
