"""`sassflow bench ingest` (keys: BENCHMARKS.md).

Phases, all in one run against a local broker it starts (and stops if it started it):
1. produce N synthetic events to a fresh topic;
2. ``raw_consume_eps``: a plain kafka-python consumer reads the topic and does nothing else, with
   kafka-python's defaults (so CRCs checked; ``ratio`` is against this one, as specified), and
   ``raw_consume_nocrc_eps`` the same with ``check_crcs=False``, the pipeline's default (see
   settings.streaming.check_crcs): ``ratio_same_client_settings`` compares like with like;
3. ``ingest_eps``: C user-stage processes + the item stage(s) run the whole pipeline over the same
   topic, with their state on the changelog topics (every commit a transaction); N / (last batch
   written - first record polled), across all processes;
4. exactness: the online store against the batch recomputation of the same events
   (``lost_events``/``double_counted_events`` summed over the 7-day impression+click counters of
   every user and item key, plus history rows missing/duplicated);
5. freshness: fresh consumers on a second topic, events produced at ``rate`` events/s with
   event_time = now; every 10th event is a probe for a user id never seen before, and a reader
   polls the online store until the probe's row appears (produce call -> readable);
   ``restore_s``: then the same consumers on a new "host" (an empty checkpoint folder) take the
   drained stages over: the slowest state owner's restore from its changelog (``restore_user_s``,
   ``restore_item_s`` per stage; ``restore_records`` read; ``changelog_records``: the topics' end
   offsets, i.e. records written before compaction plus one commit marker per transaction);
6. ``lz4``: steps 1-4 again with the events produced lz4-compressed (as clients in other languages
   and Kafka Connect often do) to a third topic: {ingest_eps, raw_consume_eps, ratio, lost_events,
   double_counted_events}.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from streaming.ingest import spawn_stages


def _log(msg: str) -> None:
    print(f"[bench ingest] {msg}", file=sys.stderr, flush=True)


def raw_consume(settings, topic: str, n: int, check_crcs: bool = True) -> float:
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(**settings.kafka.client_kwargs(), group_id=None, enable_auto_commit=False,
                      max_poll_records=settings.streaming.batch_max_events, check_crcs=check_crcs,
                      fetch_max_bytes=16 * 1024 * 1024, max_partition_fetch_bytes=4 * 1024 * 1024)
    tps = [TopicPartition(topic, p) for p in sorted(c.partitions_for_topic(topic))]
    c.assign(tps)
    c.end_offsets(tps)  # connections and metadata up before the clock starts
    c.seek_to_beginning(*tps)
    got, t0 = 0, time.perf_counter()
    while got < n:
        got += sum(len(r) for r in c.poll(timeout_ms=1000).values())
    dt = time.perf_counter() - t0
    c.close()
    return got / dt


def _exactness(settings, events) -> dict:
    import pyarrow.dataset as ds

    from features.store import OnlineWriter, build_store
    from features.windows import evaluate
    from sassflow.contracts.features import VIEWS_BY_NAME
    from streaming.history import events_dir
    from streaming.replay import recompute, view_rows
    from streaming.sources import events_frame

    expected = dict(view_rows(recompute(events_frame(events), settings.scenarios)))
    writer = OnlineWriter(build_store(settings))
    lost = double = mismatched = 0
    n_scen = len(settings.scenarios)
    for view in ("user_scenario_stats", "item_scenario_stats"):
        rows = expected[view]
        for i in range(0, len(rows), 2000):
            chunk = rows[i:i + 2000]
            for (_, feats, ts), (_, got) in zip(chunk, writer.read(view, [e for e, _, _ in chunk])):
                # the 7d counters as of the key's newest event: every event of the key's last week
                want = evaluate(VIEWS_BY_NAME[view], feats, ts, n_scen)
                have = evaluate(VIEWS_BY_NAME[view], got, ts, n_scen) if got is not None else None
                want_n = want["imp_7d"] + want["clk_7d"]
                have_n = 0 if have is None else have["imp_7d"] + have["clk_7d"]
                lost += max(0, want_n - have_n)
                double += max(0, have_n - want_n)
                mismatched += int(got is None or any(got[f] != v for f, v in feats.items()))
    hist = ds.dataset(str(events_dir(settings.streaming.offline_dir)), format="parquet").to_table(
        columns=["event_id"]).to_pandas()
    lost_hist = len({e.event_id for e in events} - set(hist["event_id"]))
    dup_hist = int(hist["event_id"].duplicated().sum())
    return {"lost_events": lost + lost_hist, "double_counted_events": double + dup_hist,
            "mismatched_keys": mismatched, "history_rows": len(hist)}


def _freshness(settings, consumers: int, rate: float, seconds: float) -> dict:
    import numpy as np

    from features.store import OnlineWriter, build_store
    from streaming.topics import ensure_topics
    from streaming.produce import make_producer
    from streaming.sources import SyntheticSource
    from streaming.state import checkpoint_root

    ensure_topics(settings)
    procs = spawn_stages(settings, consumers)
    topic = settings.kafka.events_topic
    user_ckpt = checkpoint_root(settings, settings.kafka.consumer_group, topic)
    deadline = time.monotonic() + 120  # consumers up and assigned: they have checkpointed this topic
    while not (user_ckpt.exists() and any(user_ckpt.glob("p*.json"))) and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)
    writer = OnlineWriter(build_store(settings))
    n = int(rate * seconds)
    base = list(SyntheticSource(n_users=2000, n_items=5000, n_events=n, scenarios=settings.scenarios, seed=7).events())
    pending: dict = {}  # (user, scenario) -> produce time
    lat: list[float] = []
    lock = threading.Lock()
    done = threading.Event()

    def probe():
        while not (done.is_set() and not pending):
            with lock:
                keys = list(pending.items())[:500]
            if keys:
                got = writer.read("user_scenario_stats", [{"user_id": u, "scenario": s} for (u, s), _ in keys])
                now = time.time()
                with lock:
                    for ((k, t), (_, row)) in zip(keys, got):
                        if row is not None:
                            lat.append((now - t) * 1000)
                            pending.pop(k, None)
            time.sleep(0.005)
            if done.is_set() and time.monotonic() > give_up:
                break

    give_up = time.monotonic() + seconds + 60
    reader = threading.Thread(target=probe, daemon=True)
    reader.start()
    producer = make_producer(settings, linger_ms=2)
    t0 = time.monotonic()
    for i, e in enumerate(base):
        now_ms = int(time.time() * 1000)
        probe_event = i % 10 == 0
        e = e.model_copy(update={"event_time": now_ms, "event_id": f"fresh-{i}",
                                 **({"user_id": 50_000_000 + i} if probe_event else {})})
        sent_at = time.time()
        producer.send(topic, key=e.key(), value=e.to_bytes())
        if probe_event:
            with lock:
                pending[(e.user_id, e.scenario)] = sent_at
        delay = t0 + (i + 1) / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    producer.flush()
    achieved = n / (time.monotonic() - t0)
    done.set()
    reader.join(seconds + 70)
    for p in procs:
        p.terminate()
    for p in procs:
        p.join(60)
    lat_a = np.array(lat) if lat else np.array([float("nan")])
    return {"freshness_p50_ms": float(np.percentile(lat_a, 50)), "freshness_p99_ms": float(np.percentile(lat_a, 99)),
            "freshness_samples": len(lat), "freshness_unseen": len(pending), "freshness_rate_eps": achieved}


def _run_stages(s, consumers: int, stages: tuple[str, ...]) -> list:
    """Run ``stages`` over the whole topic until idle; each consumer's (stage, index, result)."""
    results = mp.get_context("spawn").Queue()
    procs = spawn_stages(s, consumers, until_idle=3.0, results=results, stages=stages)
    outs = [results.get(timeout=3600) for _ in procs]
    for p in procs:
        p.join(60)
    return outs


def _span(outs, stage=None) -> float:
    mine = [r for st, _, r in outs if stage in (None, st)]
    return (max(r.last_flush_at for r in mine if r.last_flush_at)
            - min(r.first_record_at for r in mine if r.first_record_at))


def _pipeline(s, events, consumers: int) -> dict:
    """Phases 2-4 over a topic holding ``events``: raw consume, the feature pipeline (user and item
    stages: validate, compute features, write the online store and the history, commit), exactness,
    then the recall stage alone over the same topic (its own consumer group). The recall stage builds
    recall structures, not features; run beside the feature stages it would share the same cores, so
    each is measured on its own and both figures are reported."""
    raw_eps = raw_consume(s, s.kafka.events_topic, len(events))
    raw_nocrc_eps = raw_consume(s, s.kafka.events_topic, len(events), check_crcs=False)
    _log(f"raw_consume_eps={raw_eps:.0f} (no CRC check: {raw_nocrc_eps:.0f}); "
         f"running the feature stages with {consumers} user consumer(s)")
    outs = _run_stages(s, consumers, ("user", "item"))
    ingest_eps, user_eps = len(events) / _span(outs), len(events) / _span(outs, "user")
    _log(f"ingest_eps={ingest_eps:.0f} (user stage alone {user_eps:.0f}); checking exactness")
    exact = _exactness(s, events)
    _log(str(exact))
    recall_eps = None
    if s.recall.stream:
        recall_eps = len(events) / _span(_run_stages(s, consumers, ("recall",)))
        _log(f"recall stage alone: {recall_eps:.0f} events/s")
    return {"raw_consume_eps": raw_eps, "raw_consume_nocrc_eps": raw_nocrc_eps, "ingest_eps": ingest_eps,
            "user_stage_eps": user_eps, "recall_stage_eps": recall_eps, **exact}


def _restore(s, consumers: int) -> dict:
    """A new host's consumers (an empty checkpoint folder) take the drained stages over: each state
    owner's restore from its changelog, as the consumers measure it (assignment to resume)."""
    from kafka import KafkaConsumer, TopicPartition

    from streaming.stages import item_changelog, user_changelog

    fresh = s.model_copy(deep=True)
    fresh.streaming.checkpoint_dir = Path(s.streaming.checkpoint_dir).with_name("new-host-checkpoints")
    results = mp.get_context("spawn").Queue()
    procs = spawn_stages(fresh, consumers, until_idle=2.0, results=results)
    outs = [results.get(timeout=3600) for _ in procs]
    for p in procs:
        p.join(60)
    restores = {stage: [r for st, _, res in outs if st == stage for r in res.restores] for stage in ("user", "item")}
    if any(r["source"] != "changelog" for rs in restores.values() for r in rs):
        raise RuntimeError(f"a restore on an empty disk did not read the changelog: {restores}")
    topics = [user_changelog(s), item_changelog(s)]
    c = KafkaConsumer(**s.kafka.client_kwargs(), group_id=None)
    try:
        tps = [TopicPartition(t, p) for t in topics for p in c.partitions_for_topic(t)]
        on_topics = sum(c.end_offsets(tps).values())
    finally:
        c.close()
    slowest = {stage: max((r["seconds"] for r in rs), default=0.0) for stage, rs in restores.items()}
    return {"restore_s": round(max(slowest.values()), 3), "restore_user_s": round(slowest["user"], 3),
            "restore_item_s": round(slowest["item"], 3),
            "restore_records": sum(r["records"] for rs in restores.values() for r in rs),
            "changelog_records": on_topics}


def _use_topic(s, name: str) -> None:
    s.kafka.events_topic, s.kafka.dlq_topic, s.kafka.consumer_group = name, f"{name}.dlq", name


def bench_ingest(settings, n_events: int = 200_000, consumers: int = 1, online_store: str = "redis",
                 rate: float = 2000.0, freshness_seconds: float = 15.0) -> dict:
    from pydantic import SecretStr

    from cli.local.redis import LocalRedis
    from sassflow.processes import free_port
    from features.store import apply_definitions
    from cli.local.kafka import LocalKafka
    from streaming.topics import ensure_topics
    from streaming.produce import make_producer, produce_events
    from streaming.sources import SyntheticSource

    s = settings.model_copy(deep=True)
    Path(settings.state_dir).mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-ingest-", dir=Path(settings.state_dir)))
    s.streaming.checkpoint_dir, s.streaming.offline_dir = work / "checkpoints", work / "offline"
    s.streaming.metrics_port = 0
    s.feast.data_dir, s.feast.online_store = work / "feast", online_store
    s.feast.registry_url = None
    broker = LocalKafka(s)
    started_broker = not broker.status().running
    _log(f"broker {'starting' if started_broker else 'already running'} on {broker.bootstrap}")
    broker.start()
    redis = None
    if online_store == "redis":
        redis = LocalRedis(free_port(), work / "redis").start()
        s.feast.redis_connection_string = SecretStr(redis.connection_string)
    try:
        run = uuid.uuid4().hex[:8]
        _use_topic(s, f"bench-{run}")
        ensure_topics(s)
        apply_definitions(s)
        events = list(SyntheticSource(n_users=max(1000, n_events // 50), n_items=max(2000, n_events // 20),
                                      n_events=n_events, scenarios=s.scenarios, seed=0).events())
        _log(f"producing {len(events)} events to {s.kafka.events_topic}")
        produce_events(s, events, show_progress=False)
        main = _pipeline(s, events, consumers)
        _log("restoring the stages' state on a new host (empty checkpoint folder)")
        restore = _restore(s, consumers)
        _log(str(restore))

        _use_topic(s, f"fresh-{run}")
        _log(f"freshness at {rate:.0f} events/s for {freshness_seconds:.0f}s")
        fresh = _freshness(s, consumers, rate, freshness_seconds)

        # a fresh topic, group, history and feature project (the same events must not find their rows)
        _use_topic(s, f"lz4-{run}")
        s.streaming.checkpoint_dir, s.streaming.offline_dir = work / "lz4-checkpoints", work / "lz4-offline"
        s.feast.data_dir, s.feast.project = work / "lz4-feast", f"lz4{run}"
        ensure_topics(s)
        apply_definitions(s)
        _log(f"producing the {len(events)} events lz4-compressed to {s.kafka.events_topic}")
        producer = make_producer(s, compression_type="lz4")
        produce_events(s, events, show_progress=False, producer=producer)
        producer.close()
        lz4 = _pipeline(s, events, consumers)
        r1 = lambda v: round(v, 1)  # noqa: E731
        return {"events": len(events), "loadavg_1m": round(os.getloadavg()[0], 2), "cpus": os.cpu_count(),
                "consumers": consumers, "online_store": online_store, "partitions": s.kafka.partitions,
                "raw_consume_eps": r1(main["raw_consume_eps"]), "ingest_eps": r1(main["ingest_eps"]),
                "ratio": round(main["ingest_eps"] / main["raw_consume_eps"], 3),
                "raw_consume_nocrc_eps": r1(main["raw_consume_nocrc_eps"]), "pipeline_check_crcs": s.streaming.check_crcs,
                "ratio_same_client_settings": round(main["ingest_eps"] / main[
                    "raw_consume_eps" if s.streaming.check_crcs else "raw_consume_nocrc_eps"], 3),
                "user_stage_eps": r1(main["user_stage_eps"]),
                "recall_stage_eps": main["recall_stage_eps"] and r1(main["recall_stage_eps"]),
                "recall_stage_ratio": main["recall_stage_eps"] and round(main["recall_stage_eps"] / main["raw_consume_eps"], 3),
                **{k: main[k] for k in ("lost_events", "double_counted_events", "mismatched_keys", "history_rows")},
                **restore,
                **{k: (round(v, 1) if isinstance(v, float) else v) for k, v in fresh.items()},
                "lz4": {"ingest_eps": r1(lz4["ingest_eps"]), "raw_consume_eps": r1(lz4["raw_consume_eps"]),
                        "ratio": round(lz4["ingest_eps"] / lz4["raw_consume_eps"], 3),
                        "recall_stage_eps": lz4["recall_stage_eps"] and r1(lz4["recall_stage_eps"]),
                        "lost_events": lz4["lost_events"], "double_counted_events": lz4["double_counted_events"],
                        "mismatched_keys": lz4["mismatched_keys"]}}
    finally:
        if redis is not None:
            redis.stop()
        if started_broker:
            broker.stop()
        shutil.rmtree(work, ignore_errors=True)  # checkpoints, history and Redis files of this run only
