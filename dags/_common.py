"""What both sassflow DAGs share: retries, the heavy tasks' pool and timeout, the bundle Asset (and
the alias that emits it only for a new bundle), the run folder of a task and its idempotency marker,
the conf check, the gate's decision summary, and the backfill/retrain window arithmetic.

Nothing heavy here: the DAG files import this module at parse time.  Heavy libraries (torch, faiss,
feast, pandas) are imported inside the task functions only.
"""
from __future__ import annotations

import json
import logging
import re
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Callable

from airflow.sdk import Asset, AssetAlias
from airflow.sdk.exceptions import AirflowFailException

from sassflow.files import write_text_atomic

log = logging.getLogger(__name__)

# The running service picks new bundles up from the bundle folder's pointer; this Asset is Airflow's
# record of each publication (other DAGs can schedule on it).  The publish task emits it through the
# alias, and only when it published a new bundle: a cleared, re-run publish that finds its work done
# emits nothing, so nothing scheduled on the Asset fires twice.
BUNDLE_ASSET = Asset("sassflow://bundles/current")
BUNDLE_ALIAS = AssetAlias("sassflow-bundle-publications")

DEFAULT_ARGS = {
    "owner": "sassflow",
    "retries": 2,
    "retry_delay": timedelta(seconds=30),
    "retry_exponential_backoff": True,
    "max_retry_delay": timedelta(minutes=10),
}

# What both DAGs share: one run at a time; history starts at the event contract's earliest event_time
# (a logical date before a DAG's start_date gets no task instances).
DAG_ARGS = {
    "start_date": datetime(2000, 1, 1, tzinfo=timezone.utc),
    "catchup": False,
    "max_active_runs": 1,
    "default_args": DEFAULT_ARGS,
}

DAY_MS = 86_400_000


def heavy(**over) -> dict:
    """Task arguments of the heavy tasks: the training pool (one heavy task at a time across all runs
    of both DAGs, backfill runs included) and a timeout (``settings.airflow``)."""
    cfg = settings().airflow
    return {"pool": cfg.training_pool, "execution_timeout": timedelta(minutes=cfg.task_timeout_minutes), **over}


def settings():
    """The sassflow settings, rebuilt in the task process from its environment (SASSFLOW_*)."""
    from sassflow.settings import Settings

    return Settings()


def scenario_names() -> list[str]:
    """The configured scenarios (for the Params' enum); cheap: pydantic only."""
    try:
        return list(settings().scenarios)
    except Exception:  # a broken config must not break DAG parsing; the tasks will report it
        from sassflow.settings import DEFAULT_SCENARIOS

        return list(DEFAULT_SCENARIOS)


def day_ms(d: str | date) -> int:
    """Epoch ms of 00:00 UTC on ``d`` (YYYY-MM-DD)."""
    d = date.fromisoformat(d) if isinstance(d, str) else d
    return int(datetime(d.year, d.month, d.day, tzinfo=timezone.utc).timestamp() * 1000)


def window_from_params(params: dict) -> tuple[int, int, list[str] | None]:
    """``[start 00:00, end+1 day 00:00)`` in epoch ms (``end`` is inclusive) and the scenario filter.

    The Params' JSON schema checks each field; this checks what a per-field schema cannot (the order
    of start and end, scenarios against the settings of the running task)."""
    start, end = params.get("start"), params.get("end")
    if not start or not end:
        raise ValueError("start and end (YYYY-MM-DD) are both required")
    start_ms, end_ms = day_ms(start), day_ms(end) + DAY_MS
    if end_ms <= start_ms:
        raise ValueError(f"end ({end}) is before start ({start})")
    return start_ms, end_ms, checked_scenarios(params.get("scenarios"))


def checked_scenarios(scenarios: list[str] | None) -> list[str] | None:
    """The scenario filter (None: all), each one checked against the settings of the running task."""
    scenarios = list(scenarios or []) or None
    if scenarios:
        known = set(settings().scenarios)
        unknown = sorted(set(scenarios) - known)
        if unknown:
            raise ValueError(f"unknown scenarios {unknown}; configured: {sorted(known)}")
    return scenarios


def check_conf(context) -> None:
    """Fail (no retry) on a conf key the DAG does not declare, listing the valid ones: a misspelled
    ``"retrian": true`` must not end green.  (Airflow merges unknown keys into the params without a
    word, and a per-Param schema cannot see them, so the first task checks.)"""
    valid = set(context["dag"].params)
    unknown = sorted(set((context["dag_run"].conf or {})) - valid)
    if unknown:
        raise AirflowFailException(f"unknown conf keys {unknown}; valid keys: {sorted(valid)}")


def decision_summary(result: dict) -> str:
    """One line for a gate result dict, whatever numbers it carries: the decision, the reason and
    every numeric field (e.g. candidate, champion re-scored, popularity)."""
    verdict = "promoted" if result.get("promoted") else "rejected"
    numbers = ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in _numbers(result)
                        if k != "version")
    line = f"candidate v{result.get('version')} {verdict}: {result.get('reason')}"
    return f"{line} [{numbers}]" if numbers else line


def _numbers(d: dict, prefix: str = ""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _numbers(v, f"{prefix}{k}.")
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            yield f"{prefix}{k}", v


def show_decision(context, result: dict) -> str:
    """The gate's decision where an operator looks: the task log's top level (not a collapsed group)
    and the ``decision`` XCom, shown in the task instance's XCom tab."""
    summary = decision_summary(result)
    log.log(logging.INFO if result.get("promoted") else logging.WARNING, "gate decision: %s", summary)
    context["ti"].xcom_push(key="decision", value=summary)
    return summary


def run_key(context) -> str:
    """The folder name of one logical run: its logical date, else (a run without one) its run id."""
    logical = context.get("logical_date")
    key = logical.strftime("%Y-%m-%dT%H%M%S") if logical else context["run_id"]
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", key)


def task_dir(context, key: str | None = None) -> Path:
    """``<state_dir>/runs/<dag_id>/<key>/<task_id>/``: everything one task of one logical run writes."""
    s = settings()
    return Path(s.state_dir) / "runs" / context["dag"].dag_id / (key or run_key(context)) / context["task"].task_id


def run_once(context, work: Callable[[Path], dict], key: str | None = None) -> dict:
    """Idempotency for a logical run: ``work(out_dir)`` runs only if the task's marker is missing.

    The marker (``result.json``) is written last and atomically, so a task killed half-way runs again
    on retry, while a retry or re-run after success returns the recorded result without redoing it."""
    out = task_dir(context, key)
    marker = out / "result.json"
    if marker.exists():
        result = json.loads(marker.read_text())
        print(f"already done for this run ({marker}): {result}")
        return result
    out.mkdir(parents=True, exist_ok=True)
    result = _json_safe(work(out))
    write_text_atomic(marker, json.dumps(result, default=str))
    return result


def _json_safe(value):
    """NaN/inf (e.g. a recall over no queries) become None: XComs and markers are strict JSON."""
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value
