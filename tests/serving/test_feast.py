"""The service against a real Feast online store (the one the streaming job writes)."""
from __future__ import annotations

import sqlite3
import time

import httpx

from serving.bundle import build_synthetic_bundle, publish_bundle
from cli.local.server import ServerProcess
from tests.serving.conftest import DIM, N_ITEMS, serving_settings, wait_for


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



def test_a_feature_store_never_set_up_is_a_503_with_the_reason_never_a_500(tmp_path):
    settings = serving_settings(tmp_path)  # `sassflow features apply` never ran in this state dir
    publish_bundle(settings, build_synthetic_bundle(settings, N_ITEMS, DIM, seed=1).name)
    with ServerProcess(settings, log_path=tmp_path / "server.log") as srv:
        ready = wait_for(lambda: _json(srv.url + "/readyz"), timeout=120)
        assert ready.status_code == 503 and ready.json()["ready"] is False and ready.json()["bundle_id"]
        assert any("FeatureViewNotFound" in r for r in ready.json()["reasons"]), ready.json()
        r = httpx.get(srv.url + "/recommend", params={"user_id": 4, "scenario": "drama"})
        assert r.status_code == 503 and r.json()["reason"] == "features_unavailable" and r.headers["retry-after"] == "1"
        assert "FeatureViewNotFound" in r.json()["detail"]
        r = httpx.post(srv.url + "/recommend/batch", json={"requests": [{"user_id": 4, "scenario": "drama"}]})
        assert r.status_code == 503 and r.json()["reason"] == "features_unavailable"


def test_a_hung_feature_store_times_out_into_a_503_and_recovers(tmp_path, users):
    from features.store import OnlineWriter, apply_definitions

    settings = serving_settings(tmp_path, feature_timeout_s=0.5, feature_probe_interval_s=0.2)
    writer = OnlineWriter(apply_definitions(settings))
    now_ms = int(time.time() * 1000)
    writer.write("user_scenario_stats", [({"user_id": 4, "scenario": "drama"},
                                          {"recent_clicks": users[(4, "drama")], "last_click_ms": now_ms}, now_ms)])
    publish_bundle(settings, build_synthetic_bundle(settings, N_ITEMS, DIM, seed=1).name)
    params = {"user_id": 4, "scenario": "drama", "k": 5}
    with ServerProcess(settings, log_path=tmp_path / "server.log") as srv:
        srv.wait_ready()
        assert httpx.get(srv.url + "/recommend", params=params).json()["fallback"] is False
        # Another process holds an exclusive lock on the SQLite online store: reads block on it.
        lock = sqlite3.connect(settings.feast.data_dir / "online.db", isolation_level=None)
        lock.execute("BEGIN EXCLUSIVE")
        try:
            t0 = time.perf_counter()
            r = httpx.get(srv.url + "/recommend", params=params, timeout=30)
            assert time.perf_counter() - t0 < 3.0  # the timeout, not SQLite's 5 s busy wait or a hang
            assert r.status_code == 503 and "timed out after 0.5s" in r.json()["detail"], r.text
            ready = wait_for(lambda: _json(srv.url + "/readyz"), timeout=10)
            assert ready.status_code == 503 and any("timed out" in x for x in ready.json()["reasons"])
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        wait_for(lambda: httpx.get(srv.url + "/readyz").status_code == 200, timeout=30)
        r = httpx.get(srv.url + "/recommend", params=params)
        assert r.status_code == 200 and r.json()["fallback"] is False


def _json(url: str):
    """The response when the service answers at all (it may still be starting)."""
    try:
        r = httpx.get(url, timeout=10)
    except httpx.HTTPError:
        return None
    return r if r.status_code == 200 or r.json().get("bundle_id") else None
