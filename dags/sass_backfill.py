"""
# sass_backfill

Replays a window of the offline history into the online store with the stream's own feature code,
then (optionally) retrains on that window.  Triggered by hand.

**What a backfill changes**: every key the window's events touch (of the chosen scenarios) gets its
*present* row, recomputed from the whole history of its user or item (every scenario, every event
before the window), and written only where the online store does not already hold a newer row.  So a
backfill of the past never moves live features backwards, and a scenario-limited backfill never
computes a user's cross-scenario profile from the chosen scenarios alone.

**Params**

| Param | Default | Meaning |
|---|---|---|
| `start` | required | first day (YYYY-MM-DD, UTC) |
| `end` | required | last day, inclusive (YYYY-MM-DD, UTC) |
| `scenarios` | all | only keys of these scenarios are touched (a profile still spans all scenarios) |
| `recompute_features` | `true` | replay the window into the online store |
| `retrain` | `false` | then run `sass_retrain`'s chain on the window (every scenario) |

Any other conf key fails the run at once, listing the valid ones; a window without events ends as a
skip that says so.

```bash
airflow dags trigger sass_backfill -c '{"start": "2000-05-01", "end": "2000-05-20", "scenarios": ["thriller"]}'
```
"""
from __future__ import annotations

from airflow.sdk import Param, dag, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from _common import DAG_ARGS, check_conf, heavy, run_once, scenario_names, settings, window_from_params
from _pipeline import retrain


@task
def backfill_window() -> dict:
    context = get_current_context()
    check_conf(context)
    try:
        start_ms, end_ms, scenarios = window_from_params(context["params"])
    except ValueError as exc:  # a bad conf does not get better on retry
        raise AirflowFailException(str(exc)) from exc
    return {"start_ms": start_ms, "end_ms": end_ms, "scenarios": scenarios}


@task(**heavy())
def replay_features(window: dict) -> dict:
    """The present rows of every key the window touches, recomputed with the stream's code from the
    whole history (``streaming.replay.replay_history_to_stores``), never older than the store's."""
    context = get_current_context()
    if not context["params"]["recompute_features"]:
        return {"skipped": "recompute_features is false"}

    def work(out):
        from streaming.replay import replay_history_to_stores

        return replay_history_to_stores(settings(), window["start_ms"], window["end_ms"], window["scenarios"])

    result = run_once(context, work)
    if not result["events"]:
        from training.windows import days_label

        raise AirflowSkipException(f"no events in {days_label(window['start_ms'], window['end_ms'])} for scenarios "
                                   f"{window['scenarios'] or 'all'}: nothing replayed (history: "
                                   f"{result['history_events']} events)")
    print(f"replayed {result['events']} events of the window; rows per view: {result['views']}")
    return result


@task.short_circuit(ignore_downstream_trigger_rules=True)
def retrain_requested(window: dict, replayed: dict) -> bool:
    wanted = bool(get_current_context()["params"]["retrain"])
    print("retraining on the window" if wanted else "retrain is false: done after the feature replay")
    return wanted


@dag(
    dag_id="sass_backfill",
    description="Replay a window of the offline history into the online store (never backwards); optionally retrain on it",
    schedule=None,
    tags=["sassflow", "backfill"],
    doc_md=__doc__,
    **DAG_ARGS,
    params={
        "start": Param(type="string", format="date", description="first day (YYYY-MM-DD, UTC)"),
        "end": Param(type="string", format="date", description="last day, inclusive (YYYY-MM-DD, UTC)"),
        "scenarios": Param([], type="array", items={"type": "string", "enum": scenario_names()}, uniqueItems=True,
                           description="only keys of these scenarios (default: all)"),
        "recompute_features": Param(True, type="boolean", description="replay the window into the online store"),
        "retrain": Param(False, type="boolean", description="then retrain on the window"),
    },
)
def sass_backfill():
    window = backfill_window()
    replayed = replay_features(window)
    go = retrain_requested(window, replayed)
    go >> retrain(window)


sass_backfill()
