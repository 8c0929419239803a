"""The pure feature definition: window semantics, order independence, live == batch."""
from __future__ import annotations

import random

from features.windows import evaluate
from sassflow.contracts.features import ITEM_SCENARIO_STATS, USER_PROFILE, USER_SCENARIO_STATS
from streaming.aggregate import HOUR_MS, MINUTE_MS, Ev, FeatureRows, ItemFeatures, UserFeatures, batch_features
from streaming.replay import frame_to_evs
from streaming.sources import SyntheticSource, events_frame

SCEN = ["family", "thriller", "action", "comedy", "drama"]
T0 = 1_700_000_000_000 - 1_700_000_000_000 % HOUR_MS  # an hour boundary


def ev(i, t, click=False, user=1, item=10, scen="drama"):
    return Ev(f"e{i}", user, item, scen, click, t)


def test_rows_hold_tiles_that_windows_read_as_of_any_later_time():
    evs = [ev(0, T0 - 8 * 24 * HOUR_MS), ev(1, T0 - 2 * 24 * HOUR_MS, click=True, item=11), ev(2, T0 - 2 * HOUR_MS),
           ev(3, T0 + 5 * MINUTE_MS), ev(4, T0 + 30 * MINUTE_MS, click=True, item=12), ev(5, T0 + 30 * MINUTE_MS)]
    rows = batch_features(evs, SCEN)
    stored, ts = rows.user_scenario[(1, "drama")]
    assert ts == T0 + 30 * MINUTE_MS
    f = evaluate(USER_SCENARIO_STATS, stored, ts, len(SCEN))  # as of the newest event
    assert (f["imp_1h"], f["imp_24h"], f["imp_7d"]) == (2, 3, 3)  # e0 is older than 7 days
    assert (f["clk_1h"], f["clk_24h"], f["clk_7d"]) == (1, 1, 2)
    assert f["ctr_7d"] == 2 / 3 and f["recent_clicks"] == [12, 11]
    assert "minute_tiles" not in f and sorted(f) == sorted(USER_SCENARIO_STATS.row_names)
    later = evaluate(USER_SCENARIO_STATS, stored, ts + 2 * HOUR_MS, len(SCEN))  # idle for two hours
    assert (later["imp_1h"], later["clk_1h"], later["clk_24h"], later["clk_7d"]) == (0, 0, 1, 2)
    assert later["recent_clicks"] == [12, 11]  # sequences are not windowed
    gone = evaluate(USER_SCENARIO_STATS, stored, ts + 8 * 24 * HOUR_MS, len(SCEN))
    assert (gone["imp_7d"], gone["clk_7d"], gone["ctr_7d"]) == (0, 0, 0.0)
    p, pts = rows.user_profile[1]
    assert pts == ts
    prof = evaluate(USER_PROFILE, p, ts, len(SCEN))
    assert prof["total_clk_7d"] == 2 and prof["scenario_click_share"] == [0, 0, 0, 0, 1.0]
    assert evaluate(USER_PROFILE, p, ts + 6 * 24 * HOUR_MS, len(SCEN))["total_clk_7d"] == 1  # e1 left the 7d
    item, its = rows.item_scenario[(12, "drama")]
    now = evaluate(ITEM_SCENARIO_STATS, item, its, len(SCEN))
    assert now["clk_1h"] == 1 and now["trending"] == (1 + 1) / (1 / 24 + 1)
    decayed = evaluate(ITEM_SCENARIO_STATS, item, its + 2 * HOUR_MS, len(SCEN))  # its clicks stopped
    assert decayed["trending"] < now["trending"] and decayed["clk_24h"] == 1
    assert evaluate(ITEM_SCENARIO_STATS, item, its + 2 * 24 * HOUR_MS, len(SCEN))["trending"] == 1.0


def test_recent_clicks_keep_the_20_newest_across_scenarios():
    evs = [ev(i, T0 + i * 1000, click=True, item=i, scen=SCEN[i % 5]) for i in range(60)]
    rows = batch_features(evs, SCEN)
    assert rows.user_profile[1][0]["recent_clicks_all"] == list(range(59, 39, -1))
    assert rows.user_scenario[(1, "drama")][0]["recent_clicks"] == list(range(59, -1, -5))[:20]


def _sample_events(n=4000, seed=3):
    src = SyntheticSource(n_users=60, n_items=80, n_events=n, scenarios=SCEN, seed=seed, mean_gap_ms=90_000.0)
    return frame_to_evs(events_frame(src.events()))


def test_features_do_not_depend_on_arrival_order():
    evs = _sample_events()
    shuffled = list(evs)
    random.Random(0).shuffle(shuffled)  # includes events far later than any allowed lateness
    assert batch_features(shuffled, SCEN) == batch_features(evs, SCEN)


def test_micro_batches_with_checkpoint_restore_equal_batch():
    """The live driver's path: micro-batches, rows of touched keys, state saved/restored as JSON."""
    import json

    evs = _sample_events()
    live = FeatureRows()
    users, items = UserFeatures(SCEN), ItemFeatures()
    for k in range(0, len(evs), 137):
        for e in evs[k:k + 137]:
            users.add(e)
            items.add(e)
        scen, prof = users.rows({(e.user_id, e.scenario) for e in evs[k:k + 137]})
        live.user_scenario.update({(u, s): (f, t) for u, s, f, t in scen})
        live.user_profile.update({u: (f, t) for u, f, t in prof})
        live.item_scenario.update({(i, s): (f, t) for i, s, f, t in items.rows({(e.item_id, e.scenario) for e in evs[k:k + 137]})})
        if k % 5 == 0:  # a restart: state goes through its checkpoint format
            users2, items2 = UserFeatures(SCEN), ItemFeatures()
            users2.load_json(json.loads(users.snapshot.text()))
            items2.load_json(json.loads(items.snapshot.text()))
            users, items = users2, items2
    assert live == batch_features(evs, SCEN)
