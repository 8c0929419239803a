"""Which slice of the offline history a retrain trains on (pure: times in, a window or a reason out).

* Explicit ``start``/``end`` (inclusive days) always win.
* Otherwise the ``days`` whole UTC days up to the end of the run's data interval ("run date").
* When the history's newest event lies before that window (a replayed dataset, or a stream that
  stopped long ago), the run date says nothing about the data: the window is taken in data time, the
  ``days`` up to the end of the newest event's day, and the run says so.  If a registered model was
  already trained on data up to that newest event, there is nothing new to train on: ``NoNewData``.
* A window the history cannot fill is ``NoEvents``, with the dates looked at, what the history holds
  and which Params to set; never epoch milliseconds.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime, timezone

DAY_MS = 86_400_000
PARAMS_HINT = "set the start and end Params (YYYY-MM-DD, end inclusive) to choose a window"


class NoEvents(Exception):
    """The window holds no event: the run has nothing to train on."""


class NoNewData(Exception):
    """No event is newer than what a registered model was already trained on."""


@dataclass(frozen=True)
class TrainWindow:
    start_ms: int
    end_ms: int
    basis: str  # "params", "run date" or "data time"
    note: str  # one line for the task log

    def as_dict(self) -> dict:
        return asdict(self)


def day(ms: int) -> str:
    """The UTC date of an epoch-ms instant (YYYY-MM-DD)."""
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).date().isoformat()


def days_label(start_ms: int, end_ms: int) -> str:
    """``[start_ms, end_ms)`` as inclusive UTC days, e.g. ``2000-05-01..2000-05-28``."""
    return f"{day(start_ms)}..{day(end_ms - 1)}"


def history_label(history: tuple[int, int] | None) -> str:
    return "is empty (nothing ingested yet)" if history is None else f"spans {days_label(history[0], history[1] + 1)}"


def resolve_train_window(run_end_ms: int, days: int, history: tuple[int, int] | None,
                         explicit: tuple[int, int] | None = None,
                         trained_until_ms: int | None = None) -> TrainWindow:
    """The window of one retrain run.

    ``history``: (oldest, newest) event time of the offline history, None when empty; ``explicit``:
    ``[start_ms, end_ms)`` from the Params; ``trained_until_ms``: the newest event any registered
    model was trained on (None: no model yet)."""
    if explicit is not None:
        start_ms, end_ms = explicit
        if history is None or history[1] < start_ms or history[0] >= end_ms:
            raise NoEvents(f"no events in {days_label(start_ms, end_ms)} (start/end Params): the offline "
                           f"history {history_label(history)}; the served bundle is unchanged")
        return TrainWindow(start_ms, end_ms, "params", f"training on {days_label(start_ms, end_ms)} (start/end Params)")
    start_ms, end_ms = run_end_ms - days * DAY_MS, run_end_ms
    if history is None:
        raise NoEvents(f"no events to train on: the offline history {history_label(history)}")
    oldest, newest = history
    if newest >= start_ms and oldest < end_ms:
        return TrainWindow(start_ms, end_ms, "run date",
                           f"training on the {days} days up to the run's date: {days_label(start_ms, end_ms)}")
    if oldest >= end_ms:
        raise NoEvents(f"no events in {days_label(start_ms, end_ms)}, the {days} days up to this run's date: "
                       f"the offline history {history_label(history)} (all later); {PARAMS_HINT}")
    return _data_time_window(days, newest, start_ms, end_ms, trained_until_ms)


def _data_time_window(days: int, newest: int, run_start_ms: int, run_end_ms: int,
                      trained_until_ms: int | None) -> TrainWindow:
    """The history ends before the run's window: the ``days`` up to its newest event's day."""
    end_ms = (newest // DAY_MS + 1) * DAY_MS
    start_ms = end_ms - days * DAY_MS
    behind = f"the offline history's newest event ({day(newest)}) is {(run_start_ms - newest) // DAY_MS + 1} days " \
             f"before this run's window ({days_label(run_start_ms, run_end_ms)})"
    if trained_until_ms is not None and trained_until_ms >= newest:
        raise NoNewData(f"nothing new to train on: {behind}, and a registered model was already trained on "
                        f"events up to {day(trained_until_ms)}; {PARAMS_HINT} to retrain anyway")
    return TrainWindow(start_ms, end_ms, "data time",
                       f"{behind}: training on the {days} days up to it in data time, "
                       f"{days_label(start_ms, end_ms)}; {PARAMS_HINT}")
