"""Serving's feature reader against a real Feast store written by the stream aggregation: windows are
evaluated as of the read time, not frozen at each key's last event."""
from __future__ import annotations

from features.store import OnlineWriter, apply_definitions
from sassflow.settings import Settings
from serving.feature_reader import FEATURE_NAMES, FeastFeatureReader
from streaming.aggregate import Ev, batch_features
from streaming.replay import write_rows

H, M = 3_600_000, 60_000
T0 = 1_800_000_000_000 - 1_800_000_000_000 % H  # an hour boundary (2027)


def _store_with(tmp_path, events):
    s = Settings(state_dir=tmp_path)
    store = apply_definitions(s)
    write_rows(OnlineWriter(store), batch_features(events, s.scenarios))
    return s, store


def _clicks(user, item, scenario, times, first_id=0):
    return [Ev(f"e{first_id + k}-{item}", user, item, scenario, True, t) for k, t in enumerate(times)]


def test_an_idle_user_reads_clk_1h_zero_while_24h_and_7d_hold(tmp_path):
    last = T0 + 50 * M
    events = (_clicks(7, 100, "drama", [T0 - 30 * H, T0 + 10 * M, T0 + 20 * M, T0 + 40 * M, last])
              + _clicks(7, 200, "comedy", [T0 - 3 * 24 * H], first_id=10))
    s, store = _store_with(tmp_path, events)
    now = {"ms": last}
    reader = FeastFeatureReader(s, store, clock=lambda: now["ms"])
    fresh = reader.read([(7, "drama")])[0]
    assert sorted(fresh) == sorted(["user_id", *FEATURE_NAMES])
    assert (fresh["clk_1h"], fresh["clk_24h"], fresh["clk_7d"]) == (4, 4, 5)
    assert fresh["scenario_click_share"][s.scenarios.index("drama")] == 5 / 6
    now["ms"] = last + 2 * H  # two hours without an event
    idle = reader.read([(7, "drama"), (8, "drama")])
    assert (idle[0]["clk_1h"], idle[0]["clk_24h"], idle[0]["clk_7d"]) == (0, 4, 5)
    assert idle[0]["recent_clicks"] == [100] * 5 and idle[0]["total_clk_7d"] == 6
    assert all(v is None for k, v in idle[1].items() if k != "user_id")  # never seen: cold start
    now["ms"] = last + 8 * 24 * H  # every click left the 7d window
    gone = reader.read([(7, "drama")])[0]
    assert (gone["clk_7d"], gone["total_clk_7d"], gone["scenario_click_share"]) == (0, 0, [0.0] * 5)


def test_item_trending_decays_when_its_clicks_stop(tmp_path):
    last = T0 + 59 * M
    events = _clicks(1, 42, "action", [T0 + k * M for k in range(0, 60, 3)])  # 20 clicks in one hour
    s, store = _store_with(tmp_path, events)
    now = {"ms": last}
    reader = FeastFeatureReader(s, store, clock=lambda: now["ms"])
    hot = reader.read_items([(42, "action"), (43, "action")])
    assert hot[0]["item_id"] == 42 and hot[0]["clk_1h"] == 20 and hot[0]["trending"] > 10
    assert hot[1]["trending"] is None  # no events in that scenario
    trend = [hot[0]["trending"]]
    for hours in (1, 3, 25):
        now["ms"] = last + hours * H
        trend.append(reader.read_items([(42, "action")])[0]["trending"])
    # the last hour's clicks fall below the day's hourly mean (cooling), then a day later the item
    # reads as a cold one (1.0) -- never its old score
    assert trend[0] > 1.0 > trend[1] == trend[2] and trend[3] == 1.0
