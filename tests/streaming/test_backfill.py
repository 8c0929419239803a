"""Backfills of a past window against the real broker and real Feast stores: they never move the
online store backwards, and scenario-limited windows starting mid-history stay exact.

The reference is always a fresh batch recomputation of the *whole* history with the stream's code
(``streaming.replay.recompute``): the present state of every key.
"""
from __future__ import annotations

import pytest

from features.store import OnlineWriter, apply_definitions
from features.windows import evaluate
from sassflow.contracts.features import USER_PROFILE
from streaming.history import append_history, read_history
from streaming.ingest import run_ingest
from streaming.produce import produce_events
from streaming.replay import compare_online, recompute, replay_history_to_stores, view_rows
from streaming.sources import SyntheticSource, events_frame
from streaming.topics import ensure_topics

DAY_MS = 86_400_000


def _source(n_events=6000, seed=7):
    """~3 weeks of events (a request every ~30 min), so a window mid-history has 7 days before it."""
    return SyntheticSource(n_users=120, n_items=200, n_events=n_events, seed=seed, mean_gap_ms=1_800_000.0)


def _stored(writer, rows) -> dict:
    """{(view, key tuple): (ts_ms, features)} read back from the store for every row of ``rows``."""
    out = {}
    for view, data in view_rows(rows):
        got = writer.read(view, [entity for entity, _, _ in data])
        for (entity, _, _), (ts, feats) in zip(data, got):
            out[(view, tuple(entity.values()))] = (ts, feats)
    return out


def _by_key(rows) -> dict:
    """{(view, key tuple): (features, ts_ms)} of a recomputation."""
    return {(view, tuple(entity.values())): (feats, ts) for view, data in view_rows(rows) for entity, feats, ts in data}


def _middle_window(history, scenarios):
    first, last = int(history["event_time"].min()), int(history["event_time"].max())
    start = first + (last - first) // 2  # mid-history: more than 7 days of events before it
    assert start - first > 7 * DAY_MS
    return start, start + 3 * DAY_MS, scenarios


def _skewed(feats: dict) -> dict:
    """Different values of the same features (whatever they are): every integer + 1, also inside
    integer lists (tiles, click sequences)."""
    def skew(v):
        if type(v) is int:
            return v + 1
        if isinstance(v, list) and v and all(type(x) is int for x in v):
            return [x + 1 for x in v]
        return v

    return {k: skew(v) for k, v in feats.items()}


def test_backfill_after_streaming_never_moves_a_row_back_and_equals_a_full_recomputation(kafka):
    settings = kafka
    ensure_topics(settings)
    produce_events(settings, _source().events(), show_progress=False)
    assert run_ingest(settings, processes=1, item_shards=1, until_idle=5.0) == 0
    history = read_history(settings.streaming.offline_dir)
    full = recompute(history, settings.scenarios)
    writer = OnlineWriter(apply_definitions(settings))
    streamed = compare_online(writer, full)
    assert streamed["keys"] > 0 and streamed["mismatched"] == streamed["missing"] == 0, streamed

    start, end, scenarios = _middle_window(history, settings.scenarios[1:3])
    window = history[(history["event_time"] >= start) & (history["event_time"] < end)
                     & history["scenario"].isin(scenarios)]
    # What the old replay wrote (the window alone) is older than the stream's rows for many keys:
    # the situation this test guards against.
    before = _stored(writer, full)
    window_only = _by_key(recompute(window, settings.scenarios))
    assert sum(ts < before[key][0] for key, (_, ts) in window_only.items()) > 10

    # Two keys the window touches: one with a wrong row at its present time (a backfill's reason to
    # exist: it must be fixed), one the stream has already moved past the history (it must be kept).
    present = _by_key(full)
    user = int(window["user_id"].iloc[0])
    fixed_feats, fixed_ts = present[(USER_PROFILE.name, (user,))]
    writer.write(USER_PROFILE.name, [(USER_PROFILE.entity(user), _skewed(fixed_feats), fixed_ts)])
    ahead_user = next(int(u) for u in window["user_id"].unique() if int(u) != user)
    ahead_feats, ahead_ts = present[(USER_PROFILE.name, (ahead_user,))]
    ahead_row = (_skewed(ahead_feats), ahead_ts + 3_600_000)
    writer.write(USER_PROFILE.name, [(USER_PROFILE.entity(ahead_user), *ahead_row)])
    before = _stored(writer, full)

    out = replay_history_to_stores(settings, start, end, scenarios)
    assert out["events"] == len(window) > 0 and out["history_events"] == len(history)
    profile = out["views"][USER_PROFILE.name]
    assert profile["touched"] == window["user_id"].nunique() and profile["kept_newer"] == 1, out

    after = _stored(writer, full)
    older = [key for key, (ts, _) in after.items() if before[key][0] is not None and ts < before[key][0]]
    assert older == []
    check = compare_online(writer, full)
    assert check["missing"] == 0 and check["mismatched"] == 1, check  # only the key the stream is ahead on
    assert after[(USER_PROFILE.name, (ahead_user,))][0] // 1000 == ahead_row[1] // 1000  # SQLite keeps seconds
    assert after[(USER_PROFILE.name, (user,))][1] != before[(USER_PROFILE.name, (user,))][1]  # fixed


@pytest.mark.parametrize("store", ["sqlite", "redis"])
def test_scenario_limited_backfill_from_mid_history_rebuilds_touched_keys_exactly(tmp_path, store, request):
    from tests.conftest import make_settings

    feast = {"online_store": store}
    if store == "redis":
        server = request.getfixturevalue("redis_server")
        feast["redis_connection_string"] = f"127.0.0.1:{server.port}"
    settings = make_settings(tmp_path / "state", feast=feast)
    df = events_frame(_source(n_events=5000, seed=9).events())
    append_history(settings.streaming.offline_dir, df, name="replayed")
    history = read_history(settings.streaming.offline_dir)
    start, end, scenarios = _middle_window(history, [settings.scenarios[0], settings.scenarios[3]])
    window = history[(history["event_time"] >= start) & (history["event_time"] < end)
                     & history["scenario"].isin(scenarios)]

    out = replay_history_to_stores(settings, start, end, scenarios)

    full = recompute(history, settings.scenarios)
    writer = OnlineWriter(apply_definitions(settings))
    touched = {"user_scenario_stats": len({(u, s) for u, s in zip(window["user_id"], window["scenario"])}),
               "user_profile": window["user_id"].nunique(),
               "item_scenario_stats": len({(i, s) for i, s in zip(window["item_id"], window["scenario"])})}
    assert {v: c["written"] for v, c in out["views"].items()} == touched
    check = compare_online(writer, full)  # touched keys equal the full recomputation; the others are absent
    assert check["mismatched"] == 0, check
    assert check["missing"] == check["keys"] - sum(touched.values())

    # The same window recomputed from its own events (what a scenario-limited replay used to write)
    # disagrees with the present rows: the profile's click share over the chosen scenarios only, and
    # counts/sequences missing the history before the window.
    naive, present = _by_key(recompute(window, settings.scenarios)), _by_key(full)
    profiles = [key for key in naive if key[0] == USER_PROFILE.name]

    def share(row, as_of):  # the click share a reader gets, both rows read at the present row's time
        return evaluate(USER_PROFILE, row, as_of, len(settings.scenarios))["scenario_click_share"]

    differ = [key for key in profiles if share(naive[key][0], present[key][1]) != share(*present[key])]
    assert len(differ) > len(profiles) // 2
    assert sum(naive[key] != present[key] for key in naive) > len(naive) // 2
