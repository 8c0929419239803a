"""Where a retrain's window lands, for live histories, replayed ones and empty ones."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest

from training.windows import DAY_MS, NoEvents, NoNewData, resolve_train_window


def ms(iso: str) -> int:
    return int(datetime.fromisoformat(iso).replace(tzinfo=timezone.utc).timestamp() * 1000)


REPLAYED = (ms("2000-04-25T22:00:00"), ms("2000-12-31T18:30:00"))  # MovieLens-like: year-2000 events
RUN_2026 = ms("2026-11-25T00:00:00")


def test_a_live_history_trains_on_the_days_up_to_the_run():
    w = resolve_train_window(RUN_2026, 28, (ms("2026-01-01T00:00:00"), ms("2026-11-24T23:00:00")))
    assert (w.start_ms, w.end_ms, w.basis) == (RUN_2026 - 28 * DAY_MS, RUN_2026, "run date")
    assert "2026-10-28..2026-11-24" in w.note


def test_a_replayed_history_far_behind_the_clock_trains_in_data_time_and_says_so():
    w = resolve_train_window(RUN_2026, 28, REPLAYED)
    assert (w.start_ms, w.end_ms, w.basis) == (ms("2000-12-04T00:00:00"), ms("2001-01-01T00:00:00"), "data time")
    assert "2000-12-31" in w.note and "2000-12-04..2000-12-31" in w.note and "start and end Params" in w.note
    # once a model was trained on data up to the newest event, the next scheduled run skips, saying why
    with pytest.raises(NoNewData, match=r"up to 2000-12-31.*start and end Params"):
        resolve_train_window(RUN_2026 + DAY_MS, 28, REPLAYED, trained_until_ms=REPLAYED[1])
    # a newer event (the stream resumed) means a new data-time window
    assert resolve_train_window(RUN_2026, 28, REPLAYED, trained_until_ms=REPLAYED[1] - DAY_MS).basis == "data time"


def test_explicit_params_win_and_empty_windows_say_what_the_history_holds():
    start, end = ms("2000-05-01T00:00:00"), ms("2000-05-21T00:00:00")
    w = resolve_train_window(RUN_2026, 28, REPLAYED, explicit=(start, end), trained_until_ms=REPLAYED[1])
    assert (w.start_ms, w.end_ms, w.basis) == (start, end, "params")
    with pytest.raises(NoEvents, match=r"2001-03-01\.\.2001-03-31 .*spans 2000-04-25\.\.2000-12-31"):
        resolve_train_window(RUN_2026, 28, REPLAYED, explicit=(ms("2001-03-01T00:00:00"), ms("2001-04-01T00:00:00")))
    with pytest.raises(NoEvents, match=r"is empty"):
        resolve_train_window(RUN_2026, 28, None)
    # a backfill for a date before the history starts: the dates, the history's span, the Params to set
    with pytest.raises(NoEvents, match=r"1999-12-04\.\.1999-12-31.*all later.*start and end Params"):
        resolve_train_window(ms("2000-01-01T00:00:00"), 28, REPLAYED)
