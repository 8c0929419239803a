"""The service against a real Feast online store (the one the streaming job writes)."""
from __future__ import annotations

import time

import httpx

from serving.bundle import build_synthetic_bundle, publish_bundle
from cli.local.server import ServerProcess
from tests.serving.conftest import DIM, N_ITEMS, serving_settings


def test_recommend_reads_online_features_from_feast(tmp_path, users):
    from features.store import OnlineWriter, apply_definitions  # feast: heavy, imported by this test only

    settings = serving_settings(tmp_path)
    writer = OnlineWriter(apply_definitions(settings))
    now_ms = int(time.time() * 1000)
    drama = users[(4, "drama")]
    other = users[(4, "comedy")]
    minute, hour = now_ms // 60_000, now_ms // 3_600_000
    writer.write("user_scenario_stats", [
        ({"user_id": 4, "scenario": "drama"},
         {"minute_tiles": [minute, 3, 1], "hour_tiles": [hour - 30, 21, len(drama) - 2, hour, 9, 2],
          "recent_clicks": drama}, now_ms),
        ({"user_id": 5, "scenario": "drama"}, {"minute_tiles": [minute, 4, 0], "hour_tiles": [hour, 4, 0],
                                               "recent_clicks": []}, now_ms),  # seen, never clicked
    ])
    writer.write("user_profile", [
        ({"user_id": 4}, {"scenario_hour_tiles": [hour, 3, 20, 6, hour, 4, 20, 6],
                          "recent_clicks_all": drama[:3] + other}, now_ms),
    ])
    publish_bundle(settings, build_synthetic_bundle(settings, N_ITEMS, DIM, seed=1).name)
    with ServerProcess(settings, log_path=tmp_path / "server.log") as srv:  # no static table: Feast
        srv.wait_ready()
        r = httpx.get(srv.url + "/recommend", params={"user_id": 4, "scenario": "drama", "k": 25}).json()
        assert r["fallback"] is False and len(r["items"]) == 25
        assert not set(r["items"]) & set(drama + other)
        for user in (5, 999):  # empty history, unknown user: cold start
            cold = httpx.get(srv.url + "/recommend", params={"user_id": user, "scenario": "drama", "k": 5}).json()
            assert cold["fallback"] is True and len(cold["items"]) == 5

