"""Session-wide real services: one local Kafka broker for the whole test run."""
from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from sassflow.settings import Settings

TEST_KAFKA_PORT = int(os.environ.get("SASSFLOW_TEST_KAFKA_PORT", "19192"))


def make_settings(state_dir: Path, **overrides) -> Settings:
    """Settings for a test: all state under ``state_dir``, Kafka on the session broker."""
    base = dict(
        state_dir=state_dir,
        local_kafka={"port": TEST_KAFKA_PORT, "controller_port": TEST_KAFKA_PORT + 1},
        kafka={"bootstrap_servers": f"127.0.0.1:{TEST_KAFKA_PORT}"},
        streaming={"metrics_port": 0},
    )
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    return Settings(**base)


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory):
    """The real broker (Apache Kafka 4.x, KRaft), started once per session."""
    from cli.local.kafka import LocalKafka

    state = tmp_path_factory.mktemp("kafka-session")
    settings = make_settings(state)
    broker = LocalKafka(settings)
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture()
def kafka(kafka_broker, tmp_path) -> Settings:
    """Settings pointing at the session broker, with fresh topic names and state for this test."""
    suffix = uuid.uuid4().hex[:8]
    return make_settings(
        tmp_path / "state",
        kafka={"bootstrap_servers": kafka_broker.bootstrap, "events_topic": f"events-{suffix}",
               "dlq_topic": f"events-{suffix}.dlq", "consumer_group": f"ingest-{suffix}"},
    )


@pytest.fixture()
def topic_name():
    return lambda prefix="t": f"{prefix}-{uuid.uuid4().hex[:10]}"
