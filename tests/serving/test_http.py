"""The real HTTP service in a child process: answers, cold start, bad input, hot swap, refusal, rollback."""
from __future__ import annotations

import subprocess
import sys
import threading
from collections import Counter

import httpx
import numpy as np
import pytest

from sassflow.settings import PROJECT_ROOT
from serving.bundle import build_synthetic_bundle, publish_bundle
from cli.local.server import ServerProcess
from sassflow.settings import settings_env
from tests.serving.conftest import (
    DIM, N_ITEMS, admin_headers, metric_value, served_bundle, serving_settings, wait_for,
)
from tests.serving.test_bundle import corrupt


def test_health_ready_version_metrics_docs(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    version = client.get("/version").json()
    assert version["bundle_id"] == ready.json()["bundle_id"]
    assert set(version["scenarios"]) == {"family", "thriller", "action", "comedy", "drama"}
    assert version["scenarios"]["drama"]["index"]["type"] == "ivf"
    metrics = client.get("/metrics").text
    assert f'sassflow_bundle_info{{bundle_id="{version["bundle_id"]}"' in metrics
    assert "sassflow_bundles_refused_total" in metrics and "sassflow_bundle_swaps_total" in metrics
    assert "/recommend" in client.get("/openapi.json").json()["paths"]
    assert client.get("/docs").status_code == 200


def test_recommend_personal_drops_clicked_items(client, users):
    before = metric_value(client, 'sassflow_recommend_latency_seconds_count{scenario="thriller"}')
    clicked = users[(5, "thriller")]
    r = client.get("/recommend", params={"user_id": 5, "scenario": "thriller", "k": 30})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["fallback"] is False and len(body["items"]) == 30 and len(body["scores"]) == 30
    assert not set(body["items"]) & set(clicked)
    assert all(i % 5 == 2 for i in body["items"])  # synthetic thriller ids are ≡ 2 (mod 5)
    assert body["scores"] == sorted(body["scores"], reverse=True)
    assert body["bundle_id"] == served_bundle(client)
    assert metric_value(client, 'sassflow_recommend_latency_seconds_count{scenario="thriller"}') == before + 1


def test_cold_start_returns_popular_items_flagged(client, server):
    bundle = served_bundle(client)
    popular = np.load(server.settings.serving.bundle_dir / bundle / "family" / "popular.npy")
    r = client.get("/recommend", params={"user_id": 10**12, "scenario": "family", "k": 15}).json()
    assert r["fallback"] is True and r["items"] == popular[:15].tolist()


def test_batch_answers_each_request(client, users):
    reqs = [{"user_id": 1, "scenario": "drama", "k": 5}, {"user_id": 2, "scenario": "action", "k": 3},
            {"user_id": 10**9, "scenario": "comedy", "k": 4}, {"user_id": 3, "scenario": "drama", "k": 7}]
    r = client.post("/recommend/batch", json={"requests": reqs})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [(x["user_id"], x["scenario"], len(x["items"]), x["fallback"]) for x in results] == [
        (1, "drama", 5, False), (2, "action", 3, False), (10**9, "comedy", 4, True), (3, "drama", 7, False)]
    single = client.get("/recommend", params={"user_id": 3, "scenario": "drama", "k": 7}).json()
    assert results[3]["items"] == single["items"]


@pytest.mark.parametrize("params, status, message", [
    ({"user_id": 1, "scenario": "horror"}, 400, "unknown scenario 'horror'"),
    ({"user_id": 1, "scenario": "drama", "k": 0}, 400, "k must be between 1 and 500"),
    ({"user_id": 1, "scenario": "drama", "k": 501}, 400, "k must be between 1 and 500"),
    ({"user_id": "abc", "scenario": "drama"}, 422, "user_id"),
    ({"user_id": -3, "scenario": "drama"}, 422, "user_id"),
    ({"user_id": 2**63, "scenario": "drama"}, 422, "user_id"),
    ({"scenario": "drama"}, 422, "user_id is required"),
    ({"user_id": 1, "scenario": "drama", "k": "ten"}, 422, "k"),
])
def test_bad_requests_get_4xx_with_a_message(client, params, status, message):
    r = client.get("/recommend", params=params)
    assert r.status_code == status and message in r.json()["detail"], r.text


def test_bad_batches_get_4xx(client):
    assert client.post("/recommend/batch", json={"requests": []}).status_code == 422
    assert client.post("/recommend/batch", content=b"{not json", headers={"content-type": "application/json"}).status_code == 422
    too_many = [{"user_id": 1, "scenario": "drama"}] * 257
    r = client.post("/recommend/batch", json={"requests": too_many})
    assert r.status_code == 400 and "at most 256" in r.json()["detail"]
    r = client.post("/recommend/batch", json={"requests": [{"user_id": 1, "scenario": "nope"}]})
    assert r.status_code == 400 and "unknown scenario" in r.json()["detail"]
    assert metric_value(client, 'sassflow_bad_requests_total{reason="validation"}') >= 2


def test_admin_endpoints_need_the_token(client):
    assert client.post("/admin/reload").status_code == 401
    assert client.post("/admin/reload", headers=admin_headers("wrong")).status_code == 401
    r = client.post("/admin/reload", headers=admin_headers())
    assert r.status_code == 200 and r.json()["status"] == "unchanged"


class Load:
    """Threads hammering /recommend until stopped; every non-200 is a failure."""

    def __init__(self, url: str, users, threads: int = 4):
        self.url, self.keys = url, list(users)
        self.stop = threading.Event()
        self.failures: list[str] = []
        self.versions: Counter = Counter()
        self.threads = [threading.Thread(target=self._run, args=(i,)) for i in range(threads)]

    def _run(self, seed: int) -> None:
        rng = np.random.default_rng(seed)
        with httpx.Client(base_url=self.url, timeout=30.0) as c:
            while not self.stop.is_set():
                user, scenario = self.keys[rng.integers(len(self.keys))]
                try:
                    r = c.get("/recommend", params={"user_id": user, "scenario": scenario, "k": 20})
                    if r.status_code != 200 or len(r.json()["items"]) != 20:
                        self.failures.append(f"{r.status_code} {r.text[:200]}")
                    else:
                        self.versions[r.json()["bundle_id"]] += 1
                except httpx.HTTPError as exc:
                    self.failures.append(repr(exc))

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join()


def test_hot_swap_under_load_has_zero_failed_requests(server, client, users):
    settings = server.settings
    start = served_bundle(client)
    new = [build_synthetic_bundle(settings, N_ITEMS, DIM, seed=s).name for s in (11, 12, 13)]
    swaps_before = metric_value(client, "sassflow_bundle_swaps_total")
    with Load(server.url, users) as load:
        for bundle_id in new:
            publish_bundle(settings, bundle_id)
            wait_for(lambda: load.versions[bundle_id] > 0)
            wait_for(lambda: sum(load.versions.values()) > 50 + sum(v for k, v in load.versions.items() if k != bundle_id))
    assert load.failures == []
    assert set(load.versions) >= {start, *new}
    assert served_bundle(client) == new[-1]
    assert metric_value(client, "sassflow_bundle_swaps_total") == swaps_before + 3
    # Old bundles are freed once their last in-flight request is done.
    wait_for(lambda: all(f"released bundle {b}" in server.log_path.read_text() for b in [start, *new[:-1]]))


def test_corrupt_and_mismatched_bundles_are_refused_and_old_keeps_serving(server, client, users):
    settings = server.settings
    serving = served_bundle(client)
    refused_before = metric_value(client, "sassflow_bundles_refused_total")
    bad = build_synthetic_bundle(settings, N_ITEMS, DIM, seed=21)
    corrupt(bad / "comedy" / "index.faiss")
    mismatched = build_synthetic_bundle(settings, N_ITEMS, DIM, scenarios=["comedy", "drama"], seed=22)
    for n, bundle in enumerate((bad, mismatched), start=1):
        with Load(server.url, users, threads=2) as load:
            publish_bundle(settings, bundle.name)
            wait_for(lambda: metric_value(client, "sassflow_bundles_refused_total") == refused_before + n)
        assert load.failures == [] and set(load.versions) == {serving}
        version = client.get("/version").json()
        assert version["bundle_id"] == serving and bundle.name in version["refused"]
        assert client.get("/readyz").status_code == 200
    assert "checksum mismatch" in client.get("/version").json()["refused"][bad.name]
    assert "no index for scenario" in client.get("/version").json()["refused"][mismatched.name]
    log = server.log_path.read_text()
    assert f"refused bundle {bad.name}" in log
    publish_bundle(settings, serving)  # leave the pointer on a good bundle for the next tests


def test_rollback_from_admin_endpoint_and_cli(server, client):
    settings = server.settings
    base = served_bundle(client)
    newer = build_synthetic_bundle(settings, N_ITEMS, DIM, seed=31).name
    publish_bundle(settings, newer)
    wait_for(lambda: served_bundle(client) == newer)
    r = client.post("/admin/rollback", headers=admin_headers())
    assert r.status_code == 200 and r.json()["status"] == "swapped" and r.json()["bundle_id"] == base
    assert served_bundle(client) == base
    assert metric_value(client, "sassflow_bundle_rollbacks_total") >= 1
    # The CLI moves the pointer; the watcher follows.
    publish_bundle(settings, newer)
    wait_for(lambda: served_bundle(client) == newer)
    env = {**settings_env(settings), "PATH": "/usr/bin:/bin", "SASSFLOW_CONFIG": "/dev/null"}
    out = subprocess.run([sys.executable, "-m", "cli.main", "bundle", "rollback"], cwd=PROJECT_ROOT, env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert base in out.stdout
    wait_for(lambda: served_bundle(client) == base)


def test_admin_disabled_without_token_and_not_ready_without_bundle(tmp_path):
    settings = serving_settings(tmp_path, admin_token=None)
    with ServerProcess(settings, static_features=None, log_path=tmp_path / "server.log") as srv:
        def up():
            try:
                return httpx.get(srv.url + "/healthz").status_code == 200
            except httpx.HTTPError:
                return False
        wait_for(up, timeout=60)
        assert httpx.get(srv.url + "/readyz").status_code == 503  # nothing published yet
        assert httpx.get(srv.url + "/recommend", params={"user_id": 1, "scenario": "drama"}).status_code == 503
        r = httpx.post(srv.url + "/admin/rollback", headers=admin_headers())
        assert r.status_code == 403 and "disabled" in r.json()["detail"]
        publish_bundle(settings, build_synthetic_bundle(settings, 3_000, 8, seed=1).name)
        srv.wait_ready(timeout=30)
