"""sass_retrain: retrain SASS on the recent offline history, on a schedule (settings.airflow.schedule,
default daily).

Window: the ``window_days`` (default settings.airflow.train_window_days) whole days up to the end of the
run's data interval, or ``start``..``end`` (inclusive dates) when both are given; every scenario.  The tasks (see
``_pipeline``) snapshot the window, build the point-in-time training set, pre-train, fine-tune,
evaluate against the promoted model and the baselines, gate + register, build and publish the bundle
(emitting the ``sassflow://bundles/current`` Asset).  A failed or rejected run leaves the served bundle
as it was; the reason is in the failed task's log or in the gate's skip message.

``airflow backfill create --dag-id sass_retrain --from-date … --to-date …`` retrains for past dates.
"""
from __future__ import annotations

from airflow.sdk import Param, dag, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException

from _common import DAG_ARGS, settings, trailing_window, window_from_params
from _pipeline import retrain


@task
def training_window() -> dict:
    context = get_current_context()
    params = context["params"]
    try:
        if params.get("start") or params.get("end"):
            start_ms, end_ms, _ = window_from_params(params)
        else:
            end = context.get("data_interval_end") or context["dag_run"].run_after
            days = params.get("window_days") or settings().airflow.train_window_days
            start_ms, end_ms = trailing_window(end, days)
    except ValueError as exc:  # a bad conf does not get better on retry
        raise AirflowFailException(str(exc)) from exc
    return {"start_ms": start_ms, "end_ms": end_ms}


@dag(
    dag_id="sass_retrain",
    schedule=settings().airflow.schedule,
    tags=["sassflow", "training"],
    doc_md=__doc__,
    **DAG_ARGS,
    params={
        "window_days": Param(None, type=["null", "integer"], minimum=1,
                             description="days of history up to the run (default: settings.airflow.train_window_days)"),
        "start": Param(None, type=["null", "string"], format="date", description="first day (YYYY-MM-DD), with end"),
        "end": Param(None, type=["null", "string"], format="date", description="last day, inclusive (YYYY-MM-DD)"),
    },
)
def sass_retrain():
    retrain(training_window())


sass_retrain()
