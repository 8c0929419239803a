"""The real HTTP service in a child process: answers, cold start, bad input, hot swap, refusal, rollback."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from collections import Counter

import httpx
import numpy as np
import pytest

from pydantic import ValidationError

from cli.local.server import ServerProcess
from sassflow.processes import child_env
from sassflow.settings import PROJECT_ROOT, settings_env
from serving.bundle import (
    build_synthetic_bundle, current_bundle_id, publish_bundle, read_history, read_manifest,
)
from serving.feature_reader import save_recent_clicks
from serving.index import build_index, write_index
from serving.synthetic import synthetic_catalog
from tests.serving.conftest import (
    ADMIN_TOKEN, DIM, N_ITEMS, admin_headers, edit_manifest, metric_value, put, served_bundle, serving_settings,
    tamper, wait_for, write_pointer,
)
from tests.serving.test_bundle import corrupt


def test_health_ready_version_metrics_docs(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True and ready.json()["reasons"] == []
    version = client.get("/version").json()
    assert version["bundle_id"] == ready.json()["bundle_id"]
    assert set(version["scenarios"]) == {"family", "thriller", "action", "comedy", "drama"}
    assert version["scenarios"]["drama"]["index"]["type"] == "ivf"
    metrics = client.get("/metrics").text
    assert f'sassflow_bundle_info{{bundle_id="{version["bundle_id"]}"' in metrics
    assert "sassflow_bundles_refused_total" in metrics and "sassflow_bundle_swaps_total" in metrics
    # the process collectors prometheus_client registers by default, on the service's registry
    assert metric_value(client, "process_resident_memory_bytes") > 0 and "python_gc_objects_collected_total" in metrics
    assert "/recommend" in client.get("/openapi.json").json()["paths"]
    docs = client.get("/docs")
    assert docs.status_code == 200 and "/docs/assets/swagger-ui-bundle.js" in docs.text
    assert not re.findall(r"(?:src|href|url)\s*[:=]\s*[\"']?(?:https?:)?//", docs.text)  # nothing from outside
    assert client.get("/docs/assets/swagger-ui-bundle.js").status_code == 200


def test_requests_are_counted_by_endpoint_and_status(client):
    def count(endpoint, method, status):
        return metric_value(client, f'sassflow_http_requests_total{{endpoint="{endpoint}",method="{method}",status="{status}"}}')

    before = {k: count(*k) for k in [("/admin/reload", "POST", 401), ("unmatched", "GET", 404),
                                      ("/recommend", "GET", 200), ("/recommend/batch", "POST", 413)]}
    client.post("/admin/reload")
    client.get("/no/such/path")
    client.get("/recommend", params={"user_id": 1, "scenario": "drama"})
    client.post("/recommend/batch", content=b" " * 70_000, headers={"content-type": "application/json"})
    assert {k: count(*k) for k in before} == {k: v + 1 for k, v in before.items()}


def test_a_batch_counts_each_request_once_with_its_share_of_the_time(client):
    name = 'sassflow_recommend_latency_seconds_{}{{scenario="comedy"}}'
    n0, s0 = metric_value(client, name.format("count")), metric_value(client, name.format("sum"))
    t0 = time.perf_counter()
    r = client.post("/recommend/batch", json={"requests": [{"user_id": u, "scenario": "comedy"} for u in range(1, 201)]})
    elapsed = time.perf_counter() - t0
    assert r.status_code == 200 and len(r.json()["results"]) == 200
    assert metric_value(client, name.format("count")) == n0 + 200
    assert 0 < metric_value(client, name.format("sum")) - s0 <= elapsed  # the batch's time once, not 200 times


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
    ({"user_id": 2**63, "scenario": "drama"}, 422, "user_id must be at most 9223372036854775807"),
    ({"scenario": "drama"}, 422, "user_id is required"),
    ({"user_id": 1, "scenario": "drama", "k": "ten"}, 422, "k"),
    # ids as the event contract writes them: ASCII digits, nothing else
    ({"user_id": "1_000", "scenario": "drama"}, 422, "ASCII digits"),
    ({"user_id": "\u0661\u0662", "scenario": "drama"}, 422, "ASCII digits"),  # Arabic-Indic digits
    ({"user_id": " 1 ", "scenario": "drama"}, 422, "ASCII digits"),
    ({"user_id": "+1", "scenario": "drama"}, 422, "ASCII digits"),
    ({"user_id": "1.0", "scenario": "drama"}, 422, "ASCII digits"),
    ({"user_id": "", "scenario": "drama"}, 422, "ASCII digits"),
    ({"user_id": 1, "scenario": "drama", "k": "+5"}, 422, "ASCII digits"),
    ({"user_id": 1, "scenario": "drama", "debug": 1}, 422, "unknown query parameter 'debug'"),
])
def test_bad_requests_get_4xx_with_a_message(client, params, status, message):
    r = client.get("/recommend", params=params)
    assert r.status_code == status and message in r.json()["detail"], r.text
    assert set(r.json()) == {"detail", "reason"}


def test_errors_quote_only_a_short_prefix_of_the_input(client):
    r = client.get("/recommend", params={"user_id": 1, "scenario": "x" * 10_000})
    assert r.status_code == 400 and r.json()["reason"] == "unknown_scenario" and len(r.content) < 300
    r = client.post("/recommend/batch", json={"requests": [{"user_id": "9" * 5_000, "scenario": "drama"}] * 10})
    assert r.status_code == 422 and len(r.content) < 1_000
    r = client.get("/recommend?user_id=1&user_id=2&scenario=drama")
    assert r.status_code == 422 and "more than once" in r.json()["detail"]


@pytest.mark.parametrize("body, status, message", [
    (b'{"requests": []}', 422, "at least 1 item"),
    (b"{not json", 422, "not valid JSON"),
    (b'{"requests":[{"user_id":"7","scenario":"drama"}]}', 422, "requests.0.user_id: Input should be a valid integer"),
    (b'{"requests":[{"user_id":7.0,"scenario":"drama"}]}', 422, "requests.0.user_id"),
    (b'{"requests":[{"user_id":true,"scenario":"drama"}]}', 422, "requests.0.user_id"),
    (b'{"requests":[{"user_id":NaN,"scenario":"drama"}]}', 422, "requests.0.user_id"),
    (b'{"requests":[{"user_id":Infinity,"scenario":"drama"}]}', 422, "requests.0.user_id"),
    (b'{"requests":[{"user_id":1e400,"scenario":"drama"}]}', 422, "requests.0.user_id"),
    (b'{"requests":[{"user_id":-1,"scenario":"drama"}]}', 422, "requests.0.user_id"),
    (b'{"requests":[{"user_id":1,"scenario":"drama","k":2.5}]}', 422, "requests.0.k"),
    (b'{"requests":[{"user_id":1,"scenario":"drama","k":0}]}', 400, "k must be between 1 and 500"),
    (b'{"requests":[{"user_id":1,"scenario":"nope"}]}', 400, "unknown scenario 'nope'"),
    (b'{"requests":[{"user_id":1,"scenario":"drama","x":1}]}', 422, "requests.0.x: Extra inputs are not permitted"),
    (b'{"requests":[{"user_id":1,"scenario":"dr\xffama"}]}', 422, "not valid JSON"),  # not UTF-8
    (b"[" * 60_000, 422, "not valid JSON"),  # deep nesting
    (b"[1, 2]", 422, "Input should be an object"),
])
def test_bad_batches_get_4xx(client, body, status, message):
    r = client.post("/recommend/batch", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status and message in r.json()["detail"], r.text


def test_batch_limits_and_content_type(client):
    too_many = [{"user_id": 1, "scenario": "drama"}] * 257
    r = client.post("/recommend/batch", json={"requests": too_many})
    assert r.status_code == 400 and "at most 256 requests per batch, got 257" in r.json()["detail"]
    r = client.post("/recommend/batch", content=b"\xff\xfe garbage", headers={"content-type": "text/plain"})
    assert r.status_code == 415 and r.json()["reason"] == "unsupported_media_type"
    for body in (b" " * 70_000, iter([b" " * 40_000] * 3)):  # declared length / chunked, both over 64 KiB
        r = client.post("/recommend/batch", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 413 and r.json() == {
            "detail": "the request body is larger than 65536 bytes", "reason": "body_too_large"}
    assert metric_value(client, 'sassflow_bad_requests_total{reason="validation"}') >= 1
    assert metric_value(client, 'sassflow_bad_requests_total{reason="body_too_large"}') >= 2


def test_admin_endpoints_need_the_token(client):
    r = client.post("/admin/reload")
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer" and r.json()["reason"] == "unauthorized"
    assert client.post("/admin/reload", headers=admin_headers("wrong")).status_code == 401
    assert client.post("/admin/reload", headers={"Authorization": f"Basic {ADMIN_TOKEN}"}).status_code == 401
    r = client.post("/admin/reload", headers=admin_headers())
    assert r.status_code == 200 and r.json()["status"] == "unchanged"


@pytest.mark.parametrize("token", ["", "x", "a" * 31])
def test_a_short_admin_token_is_a_settings_error(tmp_path, token):
    with pytest.raises(ValidationError, match="at least 32 characters"):
        serving_settings(tmp_path, admin_token=token)
    env = {**child_env(serving_settings(tmp_path)), "SASSFLOW_SERVING__ADMIN_TOKEN": token}
    out = subprocess.run([sys.executable, "-m", "cli.main", "serve"], cwd=PROJECT_ROOT, env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and out.stderr.strip().splitlines() == [
        "invalid setting serving.admin_token: Value error, must be at least 32 characters (or unset to disable "
        "the admin endpoints); e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))'"]


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


def spoil_vectors(bundle, seed: int, scenario: str):
    """Make ``bundle``'s ``scenario`` index hold NaN/inf vectors, every checksum still matching
    (an exact index: FAISS refuses to train IVF on them)."""
    vectors = synthetic_catalog(N_ITEMS, DIM, list(read_manifest(bundle)["scenarios"]), seed=seed)[scenario].vectors
    vectors = vectors.copy()
    vectors[::7] = np.nan
    vectors[3] = np.inf
    scratch = bundle.parent.parent / f"nonfinite-{bundle.name}.faiss"
    write_index(build_index(vectors, {"type": "flat"}), scratch)
    tamper(bundle, f"{scenario}/index.faiss", scratch.read_bytes())
    edit_manifest(bundle, lambda m: put(m, ("scenarios", scenario, "index"), {"type": "flat"}))
    return bundle


def test_bad_bundles_behind_the_pointer_are_refused_once_and_old_keeps_serving(server, client, users):
    """Bundles that publish would refuse, put behind CURRENT by hand: each refused (counted, logged
    once, reason without paths in /version), the old bundle serving throughout, reload a 409."""
    settings = server.settings
    serving = served_bundle(client)
    refused_before = metric_value(client, "sassflow_bundles_refused_total")
    bad = build_synthetic_bundle(settings, N_ITEMS, DIM, seed=21)
    corrupt(bad / "comedy" / "index.faiss")
    malformed = build_synthetic_bundle(settings, N_ITEMS, DIM, seed=23)
    edit_manifest(malformed, lambda m: [])
    cases = [(bad, "checksum mismatch on comedy/index.faiss"),
             (build_synthetic_bundle(settings, N_ITEMS, DIM, scenarios=["comedy", "drama"], seed=22),
              "no index for scenario"),
             (malformed, "invalid manifest.json"),
             (spoil_vectors(build_synthetic_bundle(settings, N_ITEMS, DIM, seed=24), 24, "drama"),
              "drama has non-finite item vectors")]
    for n, (bundle, reason) in enumerate(cases):
        with Load(server.url, users, threads=2) as load:
            write_pointer(settings, f"{bundle.name}\n".encode())
            wait_for(lambda: metric_value(client, "sassflow_bundles_refused_total") == refused_before + 2 * n + 1)
            time.sleep(5 * settings.serving.watch_interval_s)  # more watcher ticks: no retry, no recount
            assert metric_value(client, "sassflow_bundles_refused_total") == refused_before + 2 * n + 1
        assert load.failures == [] and set(load.versions) == {serving}
        version = client.get("/version").json()
        assert version["bundle_id"] == serving and reason in version["refused"][bundle.name]
        assert str(settings.state_dir) not in json.dumps(version)  # no filesystem path
        assert client.get("/readyz").status_code == 200
        r = client.post("/admin/reload", headers=admin_headers())  # an explicit retry: refused again, a 409
        assert r.status_code == 409 and r.json()["reason"] == "bundle_refused" and reason in r.json()["detail"]
    log = server.log_path.read_text()
    assert all(log.count(f"refused bundle {b.name}") == 2 for b, _ in cases)  # the watcher once, the reload once
    assert "Traceback" not in log
    write_pointer(settings, f"{serving}\n".encode())  # leave the pointer on a good bundle for the next tests


def test_a_pointer_that_names_no_bundle_is_refused_not_followed(server, client, tmp_path):
    settings = server.settings
    serving = served_bundle(client)
    outside = build_synthetic_bundle(serving_settings(tmp_path / "elsewhere"), N_ITEMS, DIM, seed=25)  # valid
    swaps = metric_value(client, "sassflow_bundle_swaps_total")
    for raw in (f"{outside}\n".encode(), f"../../{outside.parent.parent.name}/bundles/{outside.name}".encode(),
                b"\xff\xfe\x00binary"):
        refused = metric_value(client, "sassflow_bundles_refused_total")
        write_pointer(settings, raw)
        wait_for(lambda: metric_value(client, "sassflow_bundles_refused_total") == refused + 1)
        time.sleep(5 * settings.serving.watch_interval_s)
        version = client.get("/version").json()
        assert "does not hold a bundle id" in version["pointer_problem"] and str(tmp_path) not in json.dumps(version)
        assert version["bundle_id"] == serving and client.get("/readyz").status_code == 200
        assert metric_value(client, "sassflow_bundles_refused_total") == refused + 1  # once, not every tick
        write_pointer(settings, f"{serving}\n".encode())
        wait_for(lambda: client.get("/version").json()["pointer_problem"] is None)
    assert metric_value(client, "sassflow_bundle_swaps_total") == swaps  # never loaded, never reloaded
    assert server.log_path.read_text().count("refused the bundle pointer") >= 3


def test_rollback_moves_the_shared_pointer_to_the_newest_bundle_that_validates(server, client):
    """One meaning everywhere: CURRENT moves back past bundles that no longer validate (checked by
    loading them, not by checksums alone); the admin endpoint also swaps its own service at once."""
    settings = server.settings
    base = served_bundle(client)
    publish_bundle(settings, base)
    spoiled = build_synthetic_bundle(settings, N_ITEMS, DIM, seed=31).name
    newer = build_synthetic_bundle(settings, N_ITEMS, DIM, seed=32).name
    for bundle_id in (spoiled, newer):
        publish_bundle(settings, bundle_id)
    wait_for(lambda: served_bundle(client) == newer)
    spoil_vectors(settings.serving.bundle_dir / spoiled, 31, "family")  # after publishing: checksums match
    r = client.post("/admin/rollback", headers=admin_headers())
    assert r.status_code == 200 and r.json()["status"] == "swapped" and r.json()["bundle_id"] == base, r.text
    assert current_bundle_id(settings) == base and read_history(settings)[-1] == base  # the shared pointer moved
    assert spoiled not in read_history(settings) and newer not in read_history(settings)
    assert served_bundle(client) == base and spoiled in client.get("/version").json()["refused"]
    assert metric_value(client, "sassflow_bundle_rollbacks_total") >= 1
    # The CLI does the same; the watcher follows.
    publish_bundle(settings, newer)
    wait_for(lambda: served_bundle(client) == newer)
    env = {**settings_env(settings), "PATH": "/usr/bin:/bin", "SASSFLOW_CONFIG": "/dev/null"}
    out = subprocess.run([sys.executable, "-m", "cli.main", "bundle", "rollback"], cwd=PROJECT_ROOT, env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"current": base}
    wait_for(lambda: served_bundle(client) == base)


def test_cli_refuses_bad_bundles_in_one_line(server):
    settings = server.settings
    bad = build_synthetic_bundle(settings, 3_000, 8, seed=41)
    corrupt(bad / "action" / "popular.npy")
    env = {**settings_env(settings), "PATH": "/usr/bin:/bin", "SASSFLOW_CONFIG": "/dev/null"}
    before = current_bundle_id(settings)
    for bundle_id, reason in ((bad.name, "checksum mismatch on action/popular.npy"),
                              ("../../outside/X", "not a bundle id"), ("no-such-bundle", "is not a folder")):
        out = subprocess.run([sys.executable, "-m", "cli.main", "bundle", "publish", bundle_id], cwd=PROJECT_ROOT,
                             env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 1 and out.stdout == "" and len(out.stderr.strip().splitlines()) == 1, out.stderr
        assert out.stderr.startswith("publish refused: ") and reason in out.stderr
    assert current_bundle_id(settings) == before and bad.name not in read_history(settings)


def test_admin_disabled_without_token_and_not_ready_without_bundle(tmp_path, users):
    settings = serving_settings(tmp_path, admin_token=None)
    features = tmp_path / "features.npz"
    save_recent_clicks(features, settings.scenarios, users)
    with ServerProcess(settings, static_features=features, log_path=tmp_path / "server.log") as srv:
        def up():
            try:
                return httpx.get(srv.url + "/healthz").status_code == 200
            except httpx.HTTPError:
                return False
        wait_for(up, timeout=60)
        ready = httpx.get(srv.url + "/readyz")
        assert ready.status_code == 503 and ready.json()["reasons"] == ["no bundle loaded yet"]  # nothing published
        r = httpx.get(srv.url + "/recommend", params={"user_id": 1, "scenario": "drama"})
        assert r.status_code == 503 and r.json()["reason"] == "not_ready" and r.headers["retry-after"] == "1"
        r = httpx.post(srv.url + "/admin/rollback", headers=admin_headers())
        assert r.status_code == 403 and "disabled" in r.json()["detail"]
        publish_bundle(settings, build_synthetic_bundle(settings, 3_000, 8, seed=1).name)
        srv.wait_ready(timeout=30)


def test_rollback_with_no_earlier_bundle_is_a_409(tmp_path, users):
    settings = serving_settings(tmp_path)
    features = tmp_path / "features.npz"
    save_recent_clicks(features, settings.scenarios, users)
    only = build_synthetic_bundle(settings, 3_000, 8, seed=1).name
    publish_bundle(settings, only)
    with ServerProcess(settings, static_features=features, log_path=tmp_path / "server.log") as srv:
        srv.wait_ready()
        r = httpx.post(srv.url + "/admin/rollback", headers=admin_headers())
        assert r.status_code == 409 and r.json()["reason"] == "no_rollback_target"
        assert "no earlier published bundle validates" in r.json()["detail"]
        assert current_bundle_id(settings) == only
        assert httpx.get(srv.url + "/version").json()["bundle_id"] == only
