"""Hostile input against the real service: no input gets a 5xx, nothing big is read or echoed, and
the service stays responsive while bad bodies hammer it."""
from __future__ import annotations

import json
import multiprocessing
import time

import httpx
import numpy as np
import psutil
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from tests.serving.conftest import metric_value

FUZZ = settings(max_examples=150, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-2**70, max_value=2**70) | st.floats(allow_nan=True)
    | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=20,
)
entries = st.fixed_dictionaries({}, optional={
    "user_id": json_values | st.integers(min_value=0, max_value=2**63 - 1),
    "scenario": json_values | st.sampled_from(["drama", "comedy", "nope", ""]),
    "k": json_values | st.integers(min_value=-5, max_value=600),
    "extra": json_values,
})
bodies = st.one_of(
    st.binary(max_size=2_000),
    json_values.map(lambda v: json.dumps(v, allow_nan=True).encode()),
    st.lists(entries, max_size=6).map(lambda r: json.dumps({"requests": r}, allow_nan=True).encode()),
    st.builds(lambda r, junk: json.dumps({"requests": r}).encode()[:-1] + junk, st.lists(entries, max_size=3),
              st.binary(max_size=20)),
)
content_types = st.sampled_from(["application/json", "application/json; charset=utf-8", "application/json; charset=latin-1",
                                 "text/plain", "", "multipart/form-data; boundary=x", "application/x-www-form-urlencoded"])
query_values = st.text(max_size=30) | st.integers(min_value=-10, max_value=2**64).map(str) | st.sampled_from(
    ["1", "drama", "1_0", "\u0661", " 1", "+1", "1e3", "%00", "NaN"])


@pytest.fixture(scope="module")
def fuzz_client(server):
    with httpx.Client(base_url=server.url, timeout=30.0) as c:
        yield c


@FUZZ
@given(body=bodies, content_type=content_types)
def test_any_batch_body_gets_an_answer_below_500(fuzz_client, body, content_type):
    r = fuzz_client.post("/recommend/batch", content=body, headers={"content-type": content_type})
    assert r.status_code in (200, 400, 413, 415, 422), (r.status_code, r.text[:300])
    assert set(r.json()) == ({"results"} if r.status_code == 200 else {"detail", "reason"})
    assert len(r.content) < 2_000 or r.status_code == 200  # errors quote a prefix at most


@FUZZ
@given(query=st.lists(st.tuples(st.sampled_from(["user_id", "scenario", "k", "x"]) | st.text(max_size=8),
                                query_values), max_size=5))
def test_any_query_gets_an_answer_below_500(fuzz_client, query):
    r = fuzz_client.get("/recommend", params=query)
    assert r.status_code in (200, 400, 422), (r.status_code, r.text[:300])
    if r.status_code == 200:  # then it was a valid query, by the strict rules
        given_ = dict(query)
        assert given_["user_id"].isascii() and given_["user_id"].isdigit() and given_["scenario"] in (
            "family", "thriller", "action", "comedy", "drama")


@FUZZ
@given(method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]),
       path=st.sampled_from(["/recommend", "/recommend/batch", "/healthz", "/readyz", "/version", "/metrics",
                             "/admin/reload", "/admin/rollback", "/docs", "/openapi.json", "/nope"]),
       auth=st.sampled_from([None, "Bearer", "Bearer x", "Basic abc", "Bearer " + "\u00e9" * 40]),
       body=st.binary(max_size=200))
def test_every_endpoint_answers_garbage_below_500(fuzz_client, method, path, auth, body):
    headers = {"authorization": auth.encode("utf-8")} if auth else {}
    r = fuzz_client.request(method, path, content=body, headers=headers)
    assert r.status_code < 500, (method, path, r.status_code, r.text[:300])


@pytest.mark.parametrize("body, content_type", [
    (b'{"requests":[{"user_id":NaN,"scenario":"drama"}]}', "application/json"),
    (b'{"requests":[{"user_id":1e400,"scenario":"drama"}]}', "application/json"),
    (b'{"requests":[{"user_id":Infinity,"scenario":"drama"}]}', "application/json"),
    (b"\xff\xfe\x00 not utf-8 \x80\x81", "text/plain"),
    (b"\xff\xfe\x00 not utf-8 \x80\x81", "application/json"),
    (json.dumps({"requests": [{"user_id": "x" * 100, "scenario": "y" * 100}] * 50_000}).encode(), "application/json"),
])
def test_the_reported_cases_are_4xx_fast_and_leave_the_log_small(server, fuzz_client, body, content_type):
    log_before = server.log_path.stat().st_size
    t0 = time.perf_counter()
    r = fuzz_client.post("/recommend/batch", content=body, headers={"content-type": content_type})
    assert 400 <= r.status_code < 500 and time.perf_counter() - t0 < 1.0 and len(r.content) < 1_000
    assert server.log_path.stat().st_size - log_before < 2_000


def hammer(url: str, seconds: float, out) -> None:
    """Bad bodies as fast as one client can send them (a child process: its CPU is not the sampler's)."""
    big_declared = b"x" * 11_000_000
    invalid_entries = json.dumps({"requests": [{"user_id": "x" * 40, "scenario": "?"}] * 700}).encode()  # < 64 KiB
    nan = b'{"requests":[{"user_id":NaN,"scenario":"drama"}]}'
    deep = b"[" * 60_000
    statuses: dict[str, int] = {}
    deadline = time.monotonic() + seconds
    with httpx.Client(base_url=url, timeout=30.0) as client:
        n = 0
        while time.monotonic() < deadline:
            body = (big_declared, invalid_entries, nan, deep)[n % 4]
            n += 1
            try:
                status = str(client.post("/recommend/batch", content=body,
                                         headers={"content-type": "application/json"}).status_code)
            except httpx.HTTPError:  # refused before the 11 MB were sent: the server closed the connection
                status = "closed"
            statuses[status] = statuses.get(status, 0) + 1
    out.put(statuses)


def test_healthz_stays_fast_while_bad_bodies_hammer_the_service(server, fuzz_client):
    proc = psutil.Process(server.pid)
    rss_before = proc.memory_info().rss
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    attackers = [ctx.Process(target=hammer, args=(server.url, 8.0, results)) for _ in range(2)]
    for a in attackers:
        a.start()
    time.sleep(1.5)  # the attackers' interpreters start
    latencies = []
    with httpx.Client(base_url=server.url, timeout=10.0) as probe:
        end = time.monotonic() + 5.0
        while time.monotonic() < end:
            t0 = time.perf_counter()
            assert probe.get("/healthz").status_code == 200
            latencies.append(time.perf_counter() - t0)
            time.sleep(0.01)
    statuses = [results.get(timeout=60) for _ in attackers]
    for a in attackers:
        a.join(30)
    total = {k: sum(s.get(k, 0) for s in statuses) for k in set().union(*statuses)}
    assert set(total) <= {"400", "413", "422", "closed"} and sum(total.values()) > 50, total
    p99_ms = float(np.percentile(latencies, 99)) * 1000
    print(f"/healthz under bad-body load: {len(latencies)} samples, p50 {np.median(latencies) * 1000:.1f} ms, "
          f"p99 {p99_ms:.1f} ms; attackers: {total}; server RSS +{(proc.memory_info().rss - rss_before) / 2**20:.0f} MB")
    assert p99_ms < 100, p99_ms
    assert proc.memory_info().rss - rss_before < 100 * 2**20
    assert metric_value(fuzz_client, 'sassflow_http_requests_total{endpoint="/recommend/batch",method="POST",status="500"}') == 0
