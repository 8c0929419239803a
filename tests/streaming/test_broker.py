"""The local broker is a real Kafka: it starts, answers, and keeps its log across a restart."""
import pytest

from cli.local.kafka import LocalKafka
from streaming.topics import ensure_topics
from streaming.produce import produce_events, read_back
from streaming.sources import SyntheticSource

from tests.conftest import make_settings


@pytest.fixture()
def own_broker(tmp_path):
    """A second broker with its own port and data dir, so stopping it leaves the session broker alone."""
    settings = make_settings(tmp_path, local_kafka={"port": 19392, "controller_port": 19393},
                             kafka={"bootstrap_servers": "127.0.0.1:19392", "partitions": 3})
    broker = LocalKafka(settings)
    yield settings, broker
    broker.stop()


def test_restart_keeps_the_log(own_broker):
    settings, broker = own_broker
    status = broker.start()
    assert status.running and status.pid
    ensure_topics(settings)
    source = SyntheticSource(n_users=50, n_items=100, n_events=3000, scenarios=settings.scenarios, seed=3)
    produced = produce_events(settings, source.events(), show_progress=False)
    assert produced.events == 3000

    assert broker.stop() is True
    assert not broker.status().running
    assert (broker.data_dir / "log" / "meta.properties").exists()

    assert broker.start().running
    after = read_back(settings, show_progress=False)
    assert after.messages == 3000 and after.valid == 3000 and after.distinct_event_ids == 3000
    assert broker.stop() is True
    assert broker.stop() is False  # stopping twice is harmless


def test_second_start_is_idempotent(kafka_broker, kafka):
    again = LocalKafka(make_settings(kafka_broker.data_dir.parent, local_kafka={
        "port": kafka_broker.cfg.port, "controller_port": kafka_broker.cfg.controller_port,
        "data_dir": kafka_broker.data_dir}))
    status = again.start()
    assert status.running and status.pid == kafka_broker.pid()
