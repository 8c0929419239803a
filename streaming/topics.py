"""The topics the ingest needs, created when missing (partitions, replication and
``min.insync.replicas`` from settings; producers use acks=all with idempotence, ``streaming.produce``)."""
from __future__ import annotations

import time

from sassflow.settings import Settings


def ensure_topics(settings: Settings, topics: dict[str, int] | None = None) -> None:
    """Create the events and dead-letter topics (or the given name → partitions) if missing."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    k = settings.kafka
    topics = topics or {k.events_topic: k.partitions, k.dlq_topic: 1}
    admin = KafkaAdminClient(**k.client_kwargs())
    try:
        existing = set(admin.list_topics())
        configs = {"min.insync.replicas": str(k.topic_min_insync_replicas())}
        new = [NewTopic(name, partitions, k.replication_factor, topic_configs=configs)
               for name, partitions in topics.items() if name not in existing]
        if new:
            try:
                admin.create_topics(new)
            except TopicAlreadyExistsError:
                pass
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            described = admin.describe_topics(list(topics))
            if all(t.get("error_code", 0) == 0 and t.get("partitions") for t in described):
                return
            time.sleep(0.2)
    finally:
        admin.close()
