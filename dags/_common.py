"""What both sassflow DAGs share: retries, the bundle Asset, the run folder of a task and its
idempotency marker, and the backfill/retrain window arithmetic.

Nothing heavy here: the DAG files import this module at parse time.  Heavy libraries (torch, faiss,
feast, pandas) are imported inside the task functions only.
"""
from __future__ import annotations

import json
import re
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Callable

from airflow.sdk import Asset

from sassflow.files import write_text_atomic

# The running service picks new bundles up from the bundle folder's pointer; this Asset is Airflow's
# record of each publication (other DAGs can schedule on it).
BUNDLE_ASSET = Asset("sassflow://bundles/current")

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


def trailing_window(end: datetime, days: int) -> tuple[int, int]:
    """``days`` whole UTC days ending at ``end`` (exclusive), in epoch ms."""
    end_ms = int(end.timestamp() * 1000)
    return end_ms - days * DAY_MS, end_ms


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
