"""State that moves between hosts, against the real broker: two "hosts" on one machine are consumer
processes with separate checkpoint folders (no shared disk for state; the offline history is shared
storage in production, a bucket, so it stays one folder), and every test ends with the online store
and the history equal to a batch recomputation (``_assert_exact``: 0 lost, 0 counted twice)."""
from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time

from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType

from streaming.changelog import Fenced, Restorer, StateWriter
from streaming.ingest import _stage_main
from streaming.state import CheckpointStore
from streaming.stages import item_changelog, user_changelog
from streaming.topics import changelog_configs, ensure_topics
from tests.streaming.test_broker_failure import _wait_drained
from tests.streaming.test_ingest import (_assert_exact, _events, _in_background, _join_all, _produce, _tuned,
                                         _wait_for_checkpoint)


def _host(settings, name: str):
    """The settings of one host: its own checkpoint folder, everything else shared."""
    s = settings.model_copy(deep=True)
    s.streaming.checkpoint_dir = settings.state_dir / name / "checkpoints"
    return s


def _spawn(settings, stage, index, until_idle=None, results=None):
    p = mp.get_context("spawn").Process(target=_stage_main,
                                        args=(settings, stage, 0, 1, index, None, until_idle, results))
    p.start()
    return p


def _wait_for_user_checkpoint(settings, timeout=300):  # consumer start-up (imports) is slow on a loaded machine
    deadline = time.monotonic() + timeout
    while not any(settings.streaming.checkpoint_dir.rglob("p*.json")):
        assert time.monotonic() < deadline, "the consumer never checkpointed"
        time.sleep(0.1)


def _results(queue, n):
    out = {}
    for _ in range(n):
        stage, index, result = queue.get(timeout=300)  # start-up is slow on a loaded machine
        out[index] = result
    return out


def _end_offsets(settings) -> dict[int, int]:
    c = KafkaConsumer(**settings.kafka.client_kwargs(), group_id=None)
    try:
        tps = [TopicPartition(settings.kafka.events_topic, p) for p in c.partitions_for_topic(settings.kafka.events_topic)]
        return {tp.partition: o for tp, o in c.end_offsets(tps).items()}
    finally:
        c.close()


def _changelog_config(settings, topic):
    admin = KafkaAdminClient(**settings.kafka.client_kwargs())
    try:
        found = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])["topic"][topic]
        partitions = admin.describe_topics([topic])[0]["partitions"]
        assert {len(p["replica_nodes"]) for p in partitions} == {settings.kafka.replication_factor}
        return {k: found[k]["value"] for k in ("cleanup.policy", "min.insync.replicas")}, len(partitions)
    finally:
        admin.close()


def test_kill_9_one_host_and_another_takes_its_partitions_and_item_shard_over(kafka):
    s = _tuned(kafka)
    a, b = _host(s, "host-a"), _host(s, "host-b")
    events = _events(4000, seed=41)
    host_a = [_spawn(a, "user", 0), _spawn(a, "item", 1)]
    results = mp.get_context("spawn").Queue()
    host_b = []
    try:
        _wait_for_checkpoint(a)
        producer, sent = _in_background(_produce, s, events, rate=800, poison_every=250, duplicate_every=9)
        time.sleep(2.0)  # host A has processed part of the stream and committed some of it
        for p in host_a:
            os.kill(p.pid, signal.SIGKILL)  # no flush, no commit, no leave: maybe mid-transaction
            p.join()
        assert producer.is_alive(), "the kill came after the stream ended; slow the producer down"
        assert not (b.streaming.checkpoint_dir).exists()
        host_b = [_spawn(b, "user", 2, until_idle=4, results=results), _spawn(b, "item", 3, until_idle=4,
                                                                               results=results)]
        producer.join()
        outs = _results(results, 2)
        _join_all(host_b)
    finally:
        for p in host_a + host_b:
            if p.is_alive():
                p.kill()
    user, item = outs[2], outs[3]
    assert sorted(r["partition"] for r in user.restores) == [0, 1, 2, 3]  # all of A's partitions
    assert {r["source"] for r in user.restores + item.restores} == {"changelog"}  # B's disk had nothing
    assert sum(r["records"] for r in user.restores) > 0 and item.restores[0]["records"] > 0
    # B resumed where A's committed state ended, and read exactly the rest of each partition
    ends = _end_offsets(s)
    resumed = {p: o for r in user.restores for p, o in r["resumes_at"].items()}
    assert sum(resumed.values()) > 0 and user.records == sum(ends.values()) - sum(resumed.values())
    item_resumed = item.restores[0]["resumes_at"]
    assert sum(item_resumed.values()) > 0 and item.records == sum(ends.values()) - sum(item_resumed.values())
    _assert_exact(s, events, sent["value"])
    configs, partitions = _changelog_config(s, user_changelog(s))
    assert configs == {"cleanup.policy": "compact", "min.insync.replicas": "1"} and partitions == s.kafka.partitions
    assert _changelog_config(s, item_changelog(s))[1] == s.streaming.item_shards == 1


def test_a_consumer_joining_with_an_empty_disk_restores_its_partitions_from_the_changelog(kafka):
    s = _tuned(kafka)
    a, b = _host(s, "host-a"), _host(s, "host-b")
    events = _events(4000, seed=42)
    results = mp.get_context("spawn").Queue()
    host_a = [_spawn(a, "user", 0, results=results), _spawn(a, "item", 1, results=results)]
    procs = list(host_a)
    try:
        _wait_for_checkpoint(a)
        producer, _ = _in_background(_produce, s, events, rate=400, duplicate_every=11)
        time.sleep(1.5)
        procs.append(_spawn(b, "user", 2, until_idle=6, results=results))  # joins the group: a rebalance
        _wait_for_user_checkpoint(b)  # B is in the group and has restored its share
        producer.join()
        _wait_drained(s, host_a)  # B stops by itself once idle
        for p in host_a:
            os.kill(p.pid, signal.SIGTERM)
        outs = _results(results, 3)
        _join_all(procs)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
    joined, first = outs[2].restores, outs[0].restores
    firsts = {}
    for r in joined:
        firsts.setdefault(r["partition"], r)
    assert firsts and {r["source"] for r in firsts.values()} == {"changelog"}  # its disk had nothing
    assert sum(r["records"] for r in firsts.values()) > 0  # the state A had committed for them
    assert sorted({r["partition"] for r in first[:4]}) == [0, 1, 2, 3]
    kept = first[4:]  # what A got back in the rebalance B's arrival started
    assert kept and {r["source"] for r in kept} == {"cache"} and all(r["records"] == 0 for r in kept)
    _assert_exact(s, events)


def test_an_owner_that_dies_mid_transaction_is_fenced_and_its_open_transaction_never_restored(kafka, tmp_path):
    """What a kill -9 in the middle of a commit leaves: an open transaction.  The next owner's producer
    aborts it at once (not after transaction.timeout.ms) and its restore sees only committed state."""
    ensure_topics(kafka)
    topic = user_changelog(kafka)
    ensure_topics(kafka, {topic: 1}, changelog_configs())
    dead = StateWriter(kafka, topic, 0, "user")
    dead.add([("k|1|drama", "[1,[],[],[]]"), ("o|0", '{"next_offset":5,"watermark":1,"dedup_newest_ms":1}')])
    dead.commit(kafka.kafka.events_topic, {0: 5}, kafka.kafka.consumer_group)
    dead.producer.begin_transaction()
    dead.producer.send(topic, key=b"k|2|drama", value=b"[2,[],[],[]]", partition=0)
    dead.producer.send(topic, key=b"o|0", value=b'{"next_offset":9,"watermark":2,"dedup_newest_ms":2}', partition=0)
    dead.producer.flush()  # on the broker, uncommitted: the owner "dies" here

    restorer = Restorer(kafka, topic, "user", CheckpointStore(tmp_path / "new-host"))
    t0 = time.monotonic()
    r, = restorer.begin({0: 1}, lambda p: f"p{p}")
    while not r.done:
        restorer.read([r])
    took = time.monotonic() - t0
    try:
        assert took < 15, took  # the producer's transaction timeout is 60 s
        assert r.plan.source == "changelog" and r.image.features == {"1|drama": [1, [], [], []]}
        assert r.image.position(0)["next_offset"] == 5
        try:
            dead.producer.commit_transaction()
            raise AssertionError("the old owner committed after it was fenced")
        except Exception as exc:  # noqa: BLE001 -- kafka-python raises the fencing error here
            assert "Fenced" in type(exc).__name__, exc
        try:
            dead.commit(kafka.kafka.events_topic, {0: 9}, kafka.kafka.consumer_group)
            raise AssertionError("a fenced writer committed")
        except Fenced:
            pass
        r.writer.add([("o|0", '{"next_offset":7,"watermark":1,"dedup_newest_ms":1}')])  # the new owner is
        r.writer.commit(kafka.kafka.events_topic, {0: 7}, kafka.kafka.consumer_group)  # still the owner
        group = KafkaConsumer(**kafka.kafka.client_kwargs(), group_id=kafka.kafka.consumer_group,
                              enable_auto_commit=False, isolation_level="read_committed")
        assert group.committed(TopicPartition(kafka.kafka.events_topic, 0)) == 7  # offsets go with the state
        group.close()
    finally:
        r.writer.close()
        restorer.close()
        dead.producer.close(timeout=2)


def _fence(settings, transactional_id: str) -> None:
    """Open (and close) a producer with ``transactional_id``: its owner's next commit is fenced, as after
    a broker failure that bumped the epoch."""
    from kafka import KafkaProducer

    producer = KafkaProducer(**settings.kafka.client_kwargs(), transactional_id=transactional_id)
    try:
        producer.init_transactions()
    finally:
        producer.close(timeout=5)


def test_a_fenced_item_shard_takes_its_state_over_again_and_stays_exact(kafka, capfd):
    """No consumer group arbitrates an item shard: fenced with no other process of it running, it
    restores its state again and goes on (before, it stopped and nobody took the shard over)."""
    s = _tuned(kafka)
    events = _events(2500, seed=16)
    procs = [_spawn(s, "user", 0, until_idle=5), _spawn(s, "item", 1, until_idle=5)]
    try:
        _wait_for_checkpoint(s)
        producer, sent = _in_background(_produce, s, events, rate=800, poison_every=300)
        time.sleep(1.0)
        _fence(s, f"{item_changelog(s, 1)}-0")
        assert producer.is_alive(), "fenced after the stream ended; slow the producer down"
        producer.join()
    finally:
        _join_all(procs)
    _assert_exact(s, events, sent["value"])
    assert "item stage fenced" in capfd.readouterr().err
