"""`sassflow demo`: the main job, the whole loop end to end on embedded defaults.

1. start the local Kafka broker;
2. replay the first part of the events (MovieLens-1M, or the synthetic source) through Kafka;
3. run the ingest consumers until the topic is drained (history + Feast online store);
4. retrain through the Airflow DAG ``sass_retrain`` (``dag.test()``: snapshot → point-in-time
   features → stage 1 → stage 2 → evaluate → gate → register → bundle → publish);
5. start the HTTP service on the published bundle and ask for recommendations for sample users
   in every scenario;
6. replay the rest of the events, ingest, retrain again while the service is under load, and watch
   it hot-swap to the new bundle with no failed request;
7. print a summary (last stdout line, JSON) and write an HTML report with plots.

Every run gets its own folder, topics and consumer group under ``<state_dir>/demo/<run id>`` (the
broker is shared), so runs never see each other's data.  Ctrl-C stops every child process cleanly.
"""
from __future__ import annotations

import json
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path


def register(commands, benches) -> None:
    demo = commands.add_parser("demo", help="run the whole loop end to end on embedded defaults")
    demo.add_argument("--source", choices=["movielens", "synthetic"], default="movielens",
                      help="movielens falls back to synthetic when no dataset folder is found")
    demo.add_argument("--data", type=Path, help="MovieLens-format dataset folder")
    demo.add_argument("--scenarios-file", type=Path)
    demo.add_argument("--limit", type=int, help="events to replay (default: all; --quick: 60000)")
    demo.add_argument("--quick", action="store_true", help="a small, fast run")
    demo.add_argument("--first-part", type=float, default=0.8, help="share of the events before the first retrain")
    demo.add_argument("--keep-kafka", action="store_true", help="leave the broker running afterwards")
    demo.add_argument("--users", type=int, default=3000, help="synthetic: users")
    demo.add_argument("--items", type=int, default=5000, help="synthetic: items")
    demo.add_argument("--events", type=int, default=600_000, help="synthetic: events")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=cmd_demo)


def _stage(name: str) -> None:
    print(f"\n=== {name}", file=sys.stderr, flush=True)


class LoadDuringSwap:
    """Steady /recommend traffic from background threads; records every answer's status and bundle."""

    def __init__(self, url: str, keys: list[tuple[int, str]], threads: int = 4):
        self.url, self.keys, self.threads = url, keys, threads
        self.stop_flag = threading.Event()
        self.lock = threading.Lock()
        self.requests = 0
        self.failed: list[str] = []
        self.latency_ms: list[float] = []
        self.first_seen: dict[str, float] = {}
        self._workers: list[threading.Thread] = []

    def _run(self, seed: int) -> None:
        import random

        import httpx

        rng = random.Random(seed)
        with httpx.Client(base_url=self.url, timeout=10.0) as client:
            while not self.stop_flag.is_set():
                user, scenario = rng.choice(self.keys)
                t0 = time.perf_counter()
                try:
                    r = client.get("/recommend", params={"user_id": user, "scenario": scenario, "k": 20})
                    ok = r.status_code == 200
                    bundle = r.json().get("bundle_id") if ok else None
                    err = None if ok else f"HTTP {r.status_code}: {r.text[:200]}"
                except Exception as exc:  # a failed request is what this counts
                    ok, bundle, err = False, None, repr(exc)
                dt = (time.perf_counter() - t0) * 1000
                with self.lock:
                    self.requests += 1
                    self.latency_ms.append(dt)
                    if not ok:
                        self.failed.append(err)
                    elif bundle not in self.first_seen:
                        self.first_seen[bundle] = time.time()

    def __enter__(self) -> "LoadDuringSwap":
        self._workers = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(self.threads)]
        for w in self._workers:
            w.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop_flag.set()
        for w in self._workers:
            w.join(15)

    def summary(self) -> dict:
        import numpy as np

        lat = np.array(self.latency_ms) if self.latency_ms else np.zeros(1)
        return {"requests": self.requests, "failed": len(self.failed), "failures": self.failed[:5],
                "p50_ms": round(float(np.percentile(lat, 50)), 2), "p99_ms": round(float(np.percentile(lat, 99)), 2),
                "bundles_seen": list(self.first_seen)}


def _day(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).date().isoformat()


def _retrain(settings, phase: str, start_ms: int, end_ms: int) -> dict:
    """One ``sass_retrain`` run through Airflow's ``dag.test()`` on the window [start, end]."""
    from sassflow.dagrun import dag_test

    t0 = time.perf_counter()
    # distinct logical dates per phase: the DAG's tasks are idempotent per logical date
    logical = datetime.fromtimestamp(end_ms / 1000, tz=timezone.utc).replace(
        hour=23 if phase == "second" else 22, minute=0, second=0, microsecond=0)
    out = dag_test(settings, "sass_retrain", {"start": _day(start_ms), "end": _day(end_ms)},
                   logical_date=logical.isoformat(), timeout=3600)
    out["seconds"] = round(time.perf_counter() - t0, 1)
    runs = Path(settings.state_dir) / "runs" / "sass_retrain"
    key = logical.strftime("%Y-%m-%dT%H%M%S")
    for task in ("evaluate", "quality_gate", "publish", "finetune", "pretrain", "build_training_set"):
        marker = runs / key / f"retrain.{task}" / "result.json"
        if marker.exists():
            out[task] = json.loads(marker.read_text())
    return out


def _sample_recommendations(url: str, users: list[int], scenarios: list[str]) -> list[dict]:
    import httpx

    rows = []
    with httpx.Client(base_url=url, timeout=10.0) as client:
        for scenario in scenarios:
            for user in users:
                r = client.get("/recommend", params={"user_id": user, "scenario": scenario, "k": 10})
                body = r.json()
                rows.append({"user_id": user, "scenario": scenario, "status": r.status_code,
                             "fallback": body.get("fallback"), "items": body.get("items", [])[:10],
                             "bundle_id": body.get("bundle_id"), "model_version": body.get("model_version")})
    return rows


def cmd_demo(args, settings) -> int:
    import itertools

    from serving.process import ServerProcess
    from streaming.broker import LocalKafka, ensure_topics
    from streaming.cli import open_source
    from streaming.history import read_history
    from streaming.ingest_cli import run_ingest
    from streaming.produce import produce_events

    if args.quick and args.limit is None:
        args.limit = 60_000
    run_id = time.strftime("%Y%m%dT%H%M%S")
    broker = LocalKafka(settings)  # the shared broker keeps its data under the base state dir
    base = Path(settings.state_dir)
    data = settings.model_dump()
    data["state_dir"] = base / "demo" / run_id
    for section, names in {"streaming": ("checkpoint_dir", "offline_dir"), "feast": ("data_dir",),
                           "training": ("artifact_dir", "report_dir", "registry_url"), "serving": ("bundle_dir",),
                           "airflow": ("home",)}.items():
        for name in names:  # re-derived under the run's own folder
            data[section][name] = None
    settings = type(settings).model_validate(data)
    settings.kafka.events_topic = f"{settings.kafka.events_topic}.demo-{run_id}"
    settings.kafka.dlq_topic = f"{settings.kafka.events_topic}.dlq"
    settings.kafka.consumer_group = f"{settings.kafka.consumer_group}-demo-{run_id}"
    settings.serving.watch_interval_s = 0.5
    if args.quick:
        settings.training.pretrain_epochs, settings.training.finetune_epochs = 1, 2
    Path(settings.state_dir).mkdir(parents=True, exist_ok=True)

    summary: dict = {"run_id": run_id, "state_dir": str(settings.state_dir)}
    t_start = time.perf_counter()
    local = settings.kafka.bootstrap_servers == broker.bootstrap
    server = None
    try:
        if local:
            _stage("1/7 start local Kafka")
            summary["kafka"] = broker.start().to_dict()
        ensure_topics(settings)

        _stage("2/7 replay the first part of the events through Kafka")
        source = open_source(args, settings)
        summary["source"] = type(source).__name__
        total = min(args.limit or source.n_events, source.n_events)
        first = int(total * args.first_part)
        summary["events_total"] = total
        p1 = produce_events(settings, source.events(limit=first), total=first)

        _stage("3/7 ingest: Kafka → offline history + Feast online store")
        t0 = time.perf_counter()
        rc = run_ingest(settings, processes=1, until_idle=3.0)
        history = read_history(settings.streaming.offline_dir)
        summary["phase1"] = {"produced": p1.to_dict(), "ingest_rc": rc, "history_events": len(history),
                             "ingest_s": round(time.perf_counter() - t0, 1), "consumer_lag": consumer_lag(settings)}
        t_lo, t_hi = int(history["event_time"].min()), int(history["event_time"].max())

        _stage("4/7 retrain through the Airflow DAG sass_retrain (dag.test)")
        r1 = _retrain(settings, "first", t_lo, t_hi)
        summary["retrain1"] = _compact(r1)
        if r1.get("state") not in ("success", "DagRunState.SUCCESS"):
            raise RuntimeError(f"the first retrain did not succeed: {r1}")

        _stage("5/7 serve the published bundle; sample recommendations in every scenario")
        server = ServerProcess(settings, log_path=Path(settings.state_dir) / "server.log")
        ready = server.wait_ready(timeout=300)
        users = [int(u) for u in history["user_id"].drop_duplicates().head(3)] + [10**12]  # + an unknown user
        summary["sample_recommendations"] = _sample_recommendations(server.url, users, settings.scenarios)
        summary["served_before"] = ready

        _stage("6/7 replay the rest, ingest, retrain under load → hot swap")
        keys = [(int(u), s) for u, s in history[["user_id", "scenario"]].drop_duplicates().head(2000).itertuples(index=False)]
        with LoadDuringSwap(server.url, keys) as load:
            rest = itertools.islice(source.events(limit=total), first, None)
            p2 = produce_events(settings, rest, total=total - first)
            t0 = time.perf_counter()
            rc2 = run_ingest(settings, processes=1, until_idle=3.0)
            history = read_history(settings.streaming.offline_dir)
            summary["phase2"] = {"produced": p2.to_dict(), "ingest_rc": rc2, "history_events": len(history),
                                 "ingest_s": round(time.perf_counter() - t0, 1),
                                 "consumer_lag": consumer_lag(settings)}
            r2 = _retrain(settings, "second", int(history["event_time"].min()),
                          int(history["event_time"].max()))
            summary["retrain2"] = _compact(r2)
            t_dag_end = time.time()
            new_bundle = (r2.get("publish") or {}).get("bundle_id")
            deadline = time.monotonic() + 60
            while new_bundle and new_bundle not in load.first_seen and time.monotonic() < deadline:
                time.sleep(0.2)
        swap = load.summary()
        if new_bundle and new_bundle in load.first_seen:
            # publish is the DAG's last task: its end bounds the publish time from above
            swap["first_response_after_dag_end_s"] = round(max(0.0, load.first_seen[new_bundle] - t_dag_end), 2)
        swap["new_bundle"] = new_bundle
        swap["swapped"] = bool(new_bundle) and new_bundle in load.first_seen
        summary["hot_swap"] = swap
        summary["served_after"] = _get_json(server.url + "/version")
        summary["latency_ms_samples"] = len(load.latency_ms)

        _stage("7/7 summary and report")
        summary["ok"] = bool(summary["phase1"]["ingest_rc"] == 0 and summary["phase2"]["ingest_rc"] == 0
                             and swap["failed"] == 0 and (swap["swapped"] or r2.get("quality_gate", {}).get("promoted") is False))
        summary["report"] = str(write_report(settings, summary, load.latency_ms))
    except KeyboardInterrupt:
        summary["ok"] = False
        summary["interrupted"] = True
        print("interrupted: stopping the service and the broker", file=sys.stderr)
    finally:
        if server is not None:
            server.stop()
        if local and not args.keep_kafka:
            broker.stop()
    summary["wall_s"] = round(time.perf_counter() - t_start, 1)
    _print_summary(summary)
    print(json.dumps(summary, default=str))
    return 0 if summary.get("ok") else 1


def consumer_lag(settings) -> dict:
    """Messages not yet committed by each ingest consumer group (user stage, item shards), summed over
    partitions: 0 means the consumers have applied and committed everything on the topic."""
    from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

    from streaming.consumer import item_group

    topic = settings.kafka.events_topic
    shards = settings.streaming.item_shards
    groups = [settings.kafka.consumer_group] + [item_group(settings, k, shards) for k in range(shards)]
    admin = KafkaAdminClient(**settings.kafka.client_kwargs())
    consumer = KafkaConsumer(**settings.kafka.client_kwargs())
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        end = consumer.end_offsets(tps)
        committed = admin.list_group_offsets({group: tps for group in groups})
        return {group: sum(end[tp] - (offsets[tp].offset if tp in offsets and offsets[tp].offset >= 0 else 0)
                           for tp in tps)
                for group, offsets in committed.items()}
    finally:
        consumer.close()
        admin.close()


def _get_json(url: str) -> dict:
    import httpx

    return httpx.get(url, timeout=10).json()


def _compact(r: dict) -> dict:
    """The parts of a DAG run worth showing."""
    ev = r.get("evaluate") or {}
    gate = r.get("quality_gate") or {}
    pub = r.get("publish") or {}
    quality = {}
    for name, metrics in [("sass", (ev.get("candidate") or {}).get("test", {}))] + [
            (k, v.get("test", {})) for k, v in (ev.get("baselines") or {}).items()]:
        quality[name] = {m: (v.get("mean") if isinstance(v, dict) else v) for m, v in metrics.items()
                         if isinstance(v, dict)}
    return {"state": r.get("state"), "seconds": r.get("seconds"), "tasks": r.get("tasks"),
            "quality_test": quality, "gate": {k: gate.get(k) for k in ("version", "promoted", "reason")},
            "bundle_id": pub.get("bundle_id"), "model_version": pub.get("model_version")}


def _print_summary(summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=True)
    t = Table(title=f"sassflow demo {summary.get('run_id')}")
    t.add_column("what")
    t.add_column("value")
    for phase in ("phase1", "phase2"):
        if phase in summary:
            p = summary[phase]
            t.add_row(f"{phase}: events produced / in history", f"{p['produced']['events']:,} / {p['history_events']:,}")
            t.add_row(f"{phase}: ingest seconds", str(p["ingest_s"]))
            t.add_row(f"{phase}: consumer lag after ingest", str(p.get("consumer_lag")))
    for r in ("retrain1", "retrain2"):
        if r in summary:
            x = summary[r]
            t.add_row(f"{r}: DAG state / seconds", f"{x['state']} / {x['seconds']}")
            t.add_row(f"{r}: gate", str(x["gate"]))
            t.add_row(f"{r}: bundle", f"{x['bundle_id']} (model v{x['model_version']})")
    if "hot_swap" in summary:
        h = summary["hot_swap"]
        t.add_row("load during swap: requests / failed", f"{h['requests']:,} / {h['failed']}")
        t.add_row("latency p50 / p99 ms", f"{h['p50_ms']} / {h['p99_ms']}")
        t.add_row("bundles seen by clients", ", ".join(map(str, h["bundles_seen"])))
    t.add_row("wall seconds", str(summary.get("wall_s")))
    t.add_row("ok", str(summary.get("ok")))
    console.print(t)
    for r in ("retrain1", "retrain2"):
        if summary.get(r, {}).get("quality_test"):
            q = Table(title=f"{r}: test metrics (macro mean over scenarios)")
            metrics = sorted({m for v in summary[r]["quality_test"].values() for m in v})
            q.add_column("model")
            for m in metrics:
                q.add_column(m)
            for name, vals in summary[r]["quality_test"].items():
                q.add_row(name, *[f"{vals.get(m, float('nan')):.4f}" for m in metrics])
            console.print(q)


def write_report(settings, summary: dict, latency_ms: list[float]) -> Path:
    """An HTML page with the summary, the quality tables and plots (latency, training losses)."""
    import base64
    import html
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def png(fig) -> str:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        return f'<img src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'

    figs = []
    if latency_ms:
        fig, ax = plt.subplots(figsize=(7, 3.2))
        ax.hist(latency_ms, bins=60, color="#3b7dd8")
        ax.set_xlabel("GET /recommend latency (ms) during the hot swap")
        ax.set_ylabel("requests")
        figs.append(png(fig))
    for r in ("retrain1", "retrain2"):
        q = summary.get(r, {}).get("quality_test") or {}
        if q:
            fig, ax = plt.subplots(figsize=(7, 3.2))
            names = list(q)
            metrics = sorted({m for v in q.values() for m in v})
            width = 0.8 / max(1, len(names))
            for i, name in enumerate(names):
                ax.bar([j + i * width for j in range(len(metrics))], [q[name].get(m, 0) or 0 for m in metrics],
                       width, label=name)
            ax.set_xticks([j + width * (len(names) - 1) / 2 for j in range(len(metrics))], metrics)
            ax.set_title(f"{r}: test metrics, macro mean over scenarios")
            ax.legend()
            figs.append(png(fig))
    for run_dir in sorted((Path(settings.state_dir) / "runs" / "sass_retrain").glob("*")):
        hist_file = next(iter(sorted(run_dir.glob("retrain.finetune/**/history.json"))), None)
        pre_file = next(iter(sorted(run_dir.glob("retrain.pretrain/**/history.json"))), None)
        curves = {}
        for label, f in (("stage 1 (contrastive)", pre_file), ("stage 2 (two-tower)", hist_file)):
            if f:
                losses = json.loads(f.read_text()).get("losses", {})
                for k, v in losses.items():
                    if isinstance(v, list) and v:
                        curves[f"{label}: {k}"] = v
        if curves:
            fig, ax = plt.subplots(figsize=(7, 3.2))
            for k, v in curves.items():
                ax.plot(v, label=k)
            ax.set_title(f"training losses, run {run_dir.name}")
            ax.set_xlabel("logged step")
            ax.legend(fontsize=7)
            figs.append(png(fig))
    body = "\n".join(f"<div>{f}</div>" for f in figs)
    doc = f"""<!doctype html><html><head><meta charset="utf-8"><title>sassflow demo {summary.get('run_id')}</title>
<style>body{{font-family:sans-serif;max-width:960px;margin:2em auto}} pre{{background:#f4f4f4;padding:1em;overflow:auto}}</style>
</head><body><h1>sassflow demo {summary.get('run_id')}</h1>
<p>ok: <b>{summary.get('ok')}</b> · wall {summary.get('wall_s', '…')} s</p>{body}
<h2>summary</h2><pre>{html.escape(json.dumps(summary, indent=2, default=str))}</pre></body></html>"""
    out = Path(settings.state_dir) / "report.html"
    out.write_text(doc)
    return out
