"""`sassflow bench retrain`: the wall time of the retrain DAG with and without the rankers (keys:
BENCHMARKS.md).

The dataset's events are written straight into a scratch offline history (the format the ingest
consumers write; no broker: this measures the DAG, not the stream), then ``sass_retrain`` runs
through Airflow's ``dag.test()`` in one Airflow process, over the whole history: once with the
rankers, once with ``ranking.enabled`` off.  A warm-up run over the first day comes first, so that
neither measured run pays for the process's first imports.  ``dag.test()`` runs the tasks one after the
other (a run's wall time is its tasks' sum plus the scheduling between them), so the rankers' share is
measured both ways: the two runs' wall times, and inside the run with rankers, the ranking tasks'
seconds over the other tasks'.
"""
from __future__ import annotations

import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

RANKING_TASKS = ("ranking.train_rankers", "ranking.register_rankers")  # task ids end with these (task groups)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _day(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d")


def write_history(settings, data_dir, limit: int | None = None) -> tuple[int, int, int]:
    """The dataset's events (the first ``limit``) into the offline history of ``settings``; returns
    (events, first event time, last event time)."""
    from sassflow.contracts.history import EVENT_COLUMNS
    from sassflow.datasets import Dataset
    from streaming.history import append_history

    data_dir = Path(data_dir)
    ev = Dataset(data_dir, settings.data.find_scenarios_file(data_dir)).load_events()
    ev = ev.head(limit) if limit else ev
    append_history(settings.streaming.offline_dir, ev[EVENT_COLUMNS], name="bench")
    return len(ev), int(ev["event_time"].min()), int(ev["event_time"].max())


def _run_summary(run: dict) -> dict:
    seconds = run.get("task_seconds", {})
    ranking = [t for t in seconds if t.endswith(RANKING_TASKS)]
    rankers = next((v for t, v in run.get("results", {}).items() if t.endswith(RANKING_TASKS[0])), None) or {}
    return {"state": run["state"], "wall_s": round(run["seconds"], 1), "tasks_sum_s": round(sum(seconds.values()), 1),
            "tasks_s": {t: round(v, 1) for t, v in sorted(seconds.items())},
            "ranking_s": round(sum(seconds[t] for t in ranking), 1),
            "rankers_included": rankers.get("included"), "rankers_reason": rankers.get("reason")}


def bench_retrain(settings, data_dir, limit: int | None = None, keep: str | None = None) -> dict:
    from cli.local.dagrun import dag_test_runs

    scratch = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="sassflow-bench-retrain-"))
    s = settings.relocated(scratch)
    t0 = time.perf_counter()
    n, lo, hi = write_history(s, data_dir, limit)
    _log(f"[bench] {n} events of {data_dir} written to the offline history in {time.perf_counter() - t0:.1f}s")
    conf = {"start": _day(lo), "end": _day(hi)}
    last = datetime.fromtimestamp(hi / 1000, tz=timezone.utc).replace(minute=0, second=0, microsecond=0)
    # the tasks are idempotent per logical date: each run has its own
    runs = [{"conf": {"start": _day(lo), "end": _day(lo)}, "logical_date": (last + timedelta(hours=1)).isoformat(),
             "env": {"SASSFLOW_RANKING__ENABLED": "true"}},  # the warm-up
            {"conf": conf, "logical_date": (last + timedelta(hours=2)).isoformat(),
             "env": {"SASSFLOW_RANKING__ENABLED": "true"}},
            {"conf": conf, "logical_date": (last + timedelta(hours=3)).isoformat(),
             "env": {"SASSFLOW_RANKING__ENABLED": "false"}}]
    _log("[bench] sass_retrain: a warm-up over the first day, then the whole window with the rankers, then "
         "without them (dag.test, one Airflow process) ...")
    t0 = time.perf_counter()
    warm_up, with_rankers, without = dag_test_runs(s, "sass_retrain", runs, timeout=4 * 3600)
    total = time.perf_counter() - t0
    a, b = _run_summary(with_rankers), _run_summary(without)
    others = a["tasks_sum_s"] - a["ranking_s"]
    return {"data": str(data_dir), "events": n, "window": conf, "with_rankers": a, "without_rankers": b,
            # what the rankers add to the DAG's wall time: between the runs, and inside the run with them
            "ranker_added_share": round((a["wall_s"] - b["wall_s"]) / b["wall_s"], 3) if b["wall_s"] else None,
            "ranking_share_of_other_tasks": round(a["ranking_s"] / others, 3) if others else None,
            "warm_up_s": _run_summary(warm_up)["wall_s"], "warm_up_state": warm_up["state"],
            "all_runs_s": round(total, 1), "state_dir": str(scratch)}
