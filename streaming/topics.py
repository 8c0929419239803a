"""The topics the ingest needs, created when missing (partitions, replication and
``min.insync.replicas`` from settings; producers use acks=all with idempotence, ``streaming.produce``):
the events and dead-letter topics, and one compacted changelog topic per stateful stage
(``streaming.changelog``), named after the consumer group."""
from __future__ import annotations

import time

from sassflow.settings import Settings

# How long a compacted changelog keeps a tombstone (Kafka's default, set explicitly because a local
# checkpoint older than this may have missed a deletion: ``streaming.state.plan_restore``).
CHANGELOG_TOMBSTONE_RETENTION_MS = 86_400_000
# Only closed segments are compacted: 64 MiB segments bound the uncompacted tail a restore reads
# (Kafka's default is 1 GiB).
CHANGELOG_SEGMENT_BYTES = 64 * 1024 * 1024


def changelog_topic(group: str, stage: str) -> str:
    """The changelog topic of a stage (``user``, or ``items-of-<K>`` for K item shards) of ``group``."""
    return f"{group}-{stage}-changelog"


def changelog_configs() -> dict[str, str]:
    return {"cleanup.policy": "compact", "delete.retention.ms": str(CHANGELOG_TOMBSTONE_RETENTION_MS),
            "segment.bytes": str(CHANGELOG_SEGMENT_BYTES)}


def ensure_topics(settings: Settings, topics: dict[str, int] | None = None, configs: dict[str, str] | None = None,
                  grow: bool = False) -> None:
    """Create the events and dead-letter topics (or the given name → partitions, with ``configs``) if
    missing.  ``grow``: add partitions to an existing topic with fewer (never for a keyed input topic:
    it would move keys between partitions; a changelog's records name their partition)."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    k = settings.kafka
    topics = topics or {k.events_topic: k.partitions, k.dlq_topic: 1}
    admin = KafkaAdminClient(**k.client_kwargs())
    try:
        existing = set(admin.list_topics())
        topic_configs = {"min.insync.replicas": str(k.topic_min_insync_replicas()), **(configs or {})}
        new = [NewTopic(name, partitions, k.replication_factor, topic_configs=topic_configs)
               for name, partitions in topics.items() if name not in existing]
        if new:
            try:
                admin.create_topics(new)
            except TopicAlreadyExistsError:
                pass
        described = _wait_described(admin, list(topics))
        if grow:
            short = {t["name"]: topics[t["name"]] for t in described if len(t["partitions"]) < topics[t["name"]]}
            if short:
                admin.create_partitions(short)
                _wait_described(admin, list(short), short)
    finally:
        admin.close()


def _wait_described(admin, names: list[str], partitions: dict[str, int] | None = None, timeout: float = 30) -> list:
    """The topics' descriptions once each has its partitions (at least ``partitions[name]``)."""
    deadline = time.monotonic() + timeout
    while True:
        described = admin.describe_topics(names)
        if all(t.get("error_code", 0) == 0 and len(t.get("partitions") or []) >= (partitions or {}).get(t["name"], 1)
               for t in described) or time.monotonic() > deadline:
            return described
        time.sleep(0.2)
