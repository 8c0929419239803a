"""sass_backfill: replay the offline history of a window through the streaming feature code into the
Feast stores, then (``retrain``) retrain on that window.  Triggered by hand with Params:

    start, end            first and last day (YYYY-MM-DD, UTC, end inclusive)
    scenarios             replay only these scenarios (default: all; a retrain always uses all)
    recompute_features    replay the window into the online store (default: true)
    retrain               run the retrain chain of ``sass_retrain`` on the window (default: false)

e.g. ``airflow dags trigger sass_backfill -c '{"start": "2024-01-01", "end": "2024-01-07"}'``.
"""
from __future__ import annotations

from airflow.sdk import Param, dag, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException

from _common import DAG_ARGS, run_once, scenario_names, settings, window_from_params
from _pipeline import retrain


@task
def backfill_window() -> dict:
    try:
        start_ms, end_ms, scenarios = window_from_params(get_current_context()["params"])
    except ValueError as exc:  # a bad conf does not get better on retry
        raise AirflowFailException(str(exc)) from exc
    return {"start_ms": start_ms, "end_ms": end_ms, "scenarios": scenarios}


@task
def replay_features(window: dict) -> dict:
    """The same aggregation code as the live consumer, over the window's history, into the stores."""
    context = get_current_context()
    if not context["params"]["recompute_features"]:
        return {"skipped": "recompute_features is false"}

    def work(out):
        from streaming.replay import replay_history_to_stores

        return replay_history_to_stores(settings(), window["start_ms"], window["end_ms"], window["scenarios"])

    return run_once(context, work)


@task.short_circuit(ignore_downstream_trigger_rules=True)
def retrain_requested(window: dict, replayed: dict) -> bool:
    wanted = bool(get_current_context()["params"]["retrain"])
    print("retraining on the window" if wanted else "retrain is false: done after the feature replay")
    return wanted


@dag(
    dag_id="sass_backfill",
    schedule=None,
    tags=["sassflow", "backfill"],
    doc_md=__doc__,
    **DAG_ARGS,
    params={
        "start": Param(type="string", format="date", description="first day (YYYY-MM-DD, UTC)"),
        "end": Param(type="string", format="date", description="last day, inclusive (YYYY-MM-DD, UTC)"),
        "scenarios": Param([], type="array", items={"type": "string", "enum": scenario_names()}, uniqueItems=True,
                           description="only these scenarios (default: all)"),
        "recompute_features": Param(True, type="boolean", description="replay the window into the stores"),
        "retrain": Param(False, type="boolean", description="then retrain on the window"),
    },
)
def sass_backfill():
    window = backfill_window()
    replayed = replay_features(window)
    go = retrain_requested(window, replayed)
    go >> retrain(window)


sass_backfill()
