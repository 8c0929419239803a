"""`sassflow bench freshness`: catalogue event produced -> first `/recommend` answer holding the item.

In one run: a local broker (started if none runs), a small SASS model + content tower trained on the
synthetic source, its bundle published, the real HTTP service started on it (its catalogue consumer
on a fresh items topic).  Each trial creates a new item that copies the content of an existing one,
for a (user, scenario) whose answer the copy will enter -- chosen beforehand with the bundle's own
user tower and content tower, so a trial measures propagation, not ranking -- produces its
catalogue event and asks `/recommend` every ``poll_ms`` until the item is in the answer.
Keys: ``item_freshness_p50_s``, ``item_freshness_p99_s`` (BENCHMARKS.md), ``trials``, ``missing``.
"""
from __future__ import annotations

import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

K = 20


def _log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def train_bundle(s, n_users: int, n_items: int, n_events: int, seed: int = 0):
    """SASS + content tower on the synthetic source, bundled and published; returns
    (bundle path, catalogue items, per (user, scenario) recent clicks)."""
    from serving.bundle import build_bundle
    from streaming.catalog import synthetic_catalog
    from streaming.sources import SyntheticSource, events_frame
    from training.baselines import fit
    from training.content import train_content
    from training.data import prepare
    from training.export import export_artifacts
    from training.trainer import TrainConfig

    src = SyntheticSource(n_users=n_users, n_items=n_items, n_events=n_events, scenarios=s.scenarios, seed=seed)
    events = events_frame(src.events())
    data = prepare(events, s.scenarios, with_test=False)
    model = fit("sass", data, s.training, TrainConfig.from_settings(s.training, progress=False)).model
    artifact = Path(s.training.artifact_dir) / "bench"
    export_artifacts(model, artifact, data)
    items = list(synthetic_catalog(src))
    train_content(s, None, artifact, items=items, progress=False)
    clicks = events[events["event_type"] == "click"].sort_values("event_time", ascending=False)
    recent = {(int(u), str(sc)): g["item_id"].head(K).tolist() for (u, sc), g in clicks.groupby(["user_id", "scenario"])}
    return build_bundle(s, artifact, "bench-freshness", publish=True), items, recent


def pick_trials(bundle_path: Path, items, recent: dict, n: int, client, seed: int = 0) -> list[tuple]:
    """(user, scenario, item to copy) triples for which the copy will rank in the user's top K: its
    content vector scores above the K-th item of the user's current answer."""
    from serving.towers import load_sass_tower
    from training.content_model import load_content_tower

    from sassflow.contracts.artifacts import BundleLayout

    folder = BundleLayout(bundle_path).tower_dir
    tower, content = load_sass_tower(folder), load_content_tower(folder)
    rng = np.random.default_rng(seed)
    keys = list(recent)
    cache: dict[str, np.ndarray] = {}
    trials = []
    for j in rng.permutation(len(keys))[: 20 * n].tolist():
        user, scenario = keys[j]
        answer = client.get("/recommend", params={"user_id": user, "scenario": scenario, "k": K}).json()
        if len(answer["scores"]) < K:
            continue
        if scenario not in cache:
            cache[scenario] = content.encode(items, scenario)
        q = tower.encode([{"user_id": user, "recent_clicks": recent[keys[j]]}], scenario)[0]
        scores = cache[scenario] @ q
        best = int(np.argmax(scores))
        if scores[best] > answer["scores"][-1] + 1e-3:
            trials.append((user, scenario, items[best]))
        if len(trials) == n:
            break
    return trials


def measure(s, client, trials: list[tuple], first_id: int, poll_ms: float, timeout_s: float) -> list[float | None]:
    """Per trial: seconds from producing the new item's catalogue event to the first answer holding it."""
    from streaming.produce import make_producer

    producer = make_producer(s, linger_ms=0)
    out = []
    try:
        for n, (user, scenario, original) in enumerate(trials):
            new_id = first_id + n
            item = original.model_copy(update={"item_id": new_id, "event_id": f"fresh-{new_id}",
                                               "scenarios": [scenario], "event_time": int(time.time() * 1000)})
            t0 = time.perf_counter()
            producer.send(s.kafka.items_topic, key=item.key(), value=item.to_bytes())
            producer.flush()
            answer = first_answer_with(client, [(user, scenario)], [new_id], K, timeout_s, poll_ms / 1000)
            found = time.perf_counter() - t0 if answer is not None else None
            out.append(found)
            _log(f"trial {n + 1}/{len(trials)}: {'not found' if found is None else f'{found:.3f}s'}")
    finally:
        producer.close()
    return out


def first_answer_with(client, pairs: list[tuple[int, str]], new_ids, k: int = K, timeout_s: float = 30.0,
                      poll_s: float = 0.2) -> dict | None:
    """The first `/recommend` answer, over ``pairs`` of (user, scenario) asked in turn until
    ``timeout_s``, that holds one of ``new_ids`` (for the demo: a new item recommended before the
    next bundle); None if none did."""
    new_ids = set(new_ids)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for user, scenario in pairs:
            answer = client.get("/recommend", params={"user_id": user, "scenario": scenario, "k": k}).json()
            if new_ids & set(answer.get("items", ())):
                return answer
        time.sleep(poll_s)
    return None


def bench_freshness(settings, trials: int = 30, users: int = 500, items: int = 1000, events: int = 100_000,
                    poll_ms: float = 20.0, timeout_s: float = 30.0) -> dict:
    import httpx

    from cli.local.kafka import LocalKafka
    from cli.local.server import ServerProcess
    from sassflow.processes import port_open
    from serving.feature_reader import save_recent_clicks
    from streaming.catalog import ensure_catalog_topics

    Path(settings.state_dir).mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-freshness-", dir=Path(settings.state_dir)))
    s = settings.model_copy(deep=True)  # the caller's broker and scenarios; everything else in ``work``
    s.training.artifact_dir, s.training.report_dir = work / "models", work / "reports"
    s.serving.bundle_dir = work / "bundles"
    run = uuid.uuid4().hex[:8]
    s.kafka.items_topic, s.kafka.items_dlq_topic = f"items-{run}", f"items-{run}.dlq"
    s.serving.admin_token, s.serving.watch_interval_s = None, 0.5
    s.training.finetune_epochs, s.training.pretrain_epochs = min(s.training.finetune_epochs, 3), 1
    s.content.epochs = min(s.content.epochs, 30)
    broker = LocalKafka(s)
    # a broker already answering on the configured port (ours or a test session's) is used as it is
    started = not port_open(s.local_kafka.host, s.local_kafka.port)
    if started:
        broker.start()
    try:
        ensure_catalog_topics(s)
        t0 = time.perf_counter()
        bundle, catalogue, recent = train_bundle(s, users, items, events)
        _log(f"trained and bundled in {time.perf_counter() - t0:.0f}s: {bundle.name}")
        features = work / "features.npz"
        save_recent_clicks(features, s.scenarios, recent)
        with ServerProcess(s, static_features=features, log_path=work / "server.log") as server:
            server.wait_ready()
            with httpx.Client(base_url=server.url, timeout=10.0) as client:
                chosen = pick_trials(bundle, catalogue, recent, trials, client)
                _log(f"{len(chosen)} trials chosen")
                seconds = measure(s, client, chosen, 10 * items + 1, poll_ms, timeout_s)
        found = [x for x in seconds if x is not None]
        return {"item_freshness_p50_s": float(np.percentile(found, 50)) if found else None,
                "item_freshness_p99_s": float(np.percentile(found, 99)) if found else None,
                "item_freshness_max_s": max(found) if found else None,
                "trials": len(seconds), "missing": len(seconds) - len(found), "poll_ms": poll_ms,
                "catalog_poll_ms": s.serving.catalog_poll_ms}
    finally:
        if started:
            broker.stop()
        shutil.rmtree(work, ignore_errors=True)


def add_bench_parser(benches) -> None:
    p = benches.add_parser("freshness", help="catalogue event -> first /recommend answer holding the new item")
    p.add_argument("--trials", type=int, default=30)
    p.add_argument("--users", type=int, default=500, help="synthetic source users")
    p.add_argument("--items", type=int, default=1000, help="synthetic source items")
    p.add_argument("--events", type=int, default=100_000, help="synthetic source events")
    p.add_argument("--poll-ms", type=float, default=20.0, help="how often the client asks /recommend")
    p.set_defaults(func=cmd_bench_freshness)


def cmd_bench_freshness(args, settings) -> int:
    from cli.output import emit_json

    emit_json(bench_freshness(settings, args.trials, args.users, args.items, args.events, args.poll_ms))
    return 0
