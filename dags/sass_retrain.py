"""
# sass_retrain

Retrains the SASS recall model on the recent offline history, on a schedule
(`SASSFLOW_AIRFLOW__SCHEDULE`, default `@daily`), and publishes the new bundle if the gate passes it.

**Tasks**: `training_window` → `retrain.build_training_set` (snapshot) → `pretrain` → `finetune` →
`content_tower` (catalogue items from their content) → `evaluate` (vs the promoted model and the
baselines) → `quality_gate` (register + decide); beside them `ranking.train_rankers` →
`ranking.register_rankers` (coarse + fine rankers, gated against the recall order); then
`build_bundle` (recall model + kept rankers) → `publish` (emits the `sassflow://bundles/current`
Asset for a new bundle only).  `check_features` compares sampled online rows with a recomputation
from the offline history and returns the report (counts, example keys); with
`streaming.check_fails_retrain` a mismatch fails it (an Airflow alert).

**Window** (every scenario):

- the `window_days` whole UTC days up to the end of the run's data interval;
- when the offline history ends before that (a replayed dataset, a stopped stream), the same number of
  days up to the history's newest event, in data time; the run says so in `training_window`'s log,
  and skips when a registered model was already trained on data up to that event;
- `start` and `end` (inclusive dates) override both.

A window without events, or with nothing new, ends as a **skip** whose message gives the dates and
the Params to set.  A rejected candidate skips the bundle tasks; the gate's decision and numbers are
in `quality_gate`'s `decision` XCom and at the top of its log.

**Params**

| Param | Default | Meaning |
|---|---|---|
| `window_days` | `train_window_days` (28) | days of history up to the run |
| `start` | none | first day (YYYY-MM-DD, UTC), with `end` |
| `end` | none | last day, inclusive (YYYY-MM-DD, UTC) |

Any other conf key fails the run at once, listing the valid ones.

**Backfills**: `airflow backfill create --dag-id sass_retrain --from-date … --to-date … --max-active-runs 1`
(Airflow's backfills default to 10 runs at once, independent of this DAG's `max_active_runs=1`; the
heavy tasks share the `training_pool`, and the registry's promotion lock serialises gate and publish
whatever the concurrency).
"""
from __future__ import annotations

from airflow.sdk import Param, dag, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from _common import DAG_ARGS, check_conf, settings, window_from_params
from _pipeline import retrain


@task
def training_window() -> dict:
    """The window to train on (``training.windows``), or a skip saying why there is none."""
    from streaming.history import time_range
    from training.registry import ModelRegistry
    from training.windows import NoEvents, NoNewData, resolve_train_window

    context = get_current_context()
    check_conf(context)
    params, s = context["params"], settings()
    try:
        explicit = window_from_params(params)[:2] if params.get("start") or params.get("end") else None
    except ValueError as exc:  # a bad conf does not get better on retry
        raise AirflowFailException(str(exc)) from exc
    run_end = context.get("data_interval_end") or context["dag_run"].run_after
    trained = [v.data_end_ms for v in ModelRegistry.from_settings(s).list() if v.data_end_ms is not None]
    try:
        window = resolve_train_window(int(run_end.timestamp() * 1000),
                                      params.get("window_days") or s.airflow.train_window_days,
                                      time_range(s.streaming.offline_dir), explicit, max(trained, default=None))
    except (NoEvents, NoNewData) as exc:
        raise AirflowSkipException(str(exc)) from exc
    print(window.note)
    return window.as_dict()


@dag(
    dag_id="sass_retrain",
    description="Retrain SASS on the recent offline history; publish the bundle if the gate passes it",
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
