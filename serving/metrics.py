"""Prometheus metrics of the service (one registry per service, so tests can run several).

* per request-pipeline stage (features, recall, item_features, coarse, fine): its time per call of
  the pipeline (a batch's stage runs once for all its requests);
* per recommendation: latency by scenario (a batch's time is shared out over its requests, so
  the sum is the time spent and each request counts once) and count by scenario and fallback;
* per HTTP request (``serving.middleware``): count by endpoint, method and status, and duration
  by endpoint -- 401/403/404/413/5xx included;
* refusals: 4xx answers by reason, bundles refused;
* bundles: the one served, swaps, rollbacks, load time;
* the process: CPU, memory, open fds, GC, Python version (prometheus_client's default collectors).

With several worker processes (``serving.workers``) prometheus_client's multiprocess mode is on
(``sassflow.processes.PROMETHEUS_MULTIPROC_DIR`` names a folder the workers share): every worker writes its counts there and
/metrics, whichever worker answers it, sums them; the per-process collectors are left out there.
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5, 1.0)
HTTP_BUCKETS = LATENCY_BUCKETS + (2.5, 5.0, 10.0)


def multiprocess() -> bool:
    """Whether prometheus_client stores this process's values in the shared folder: decided once, when
    it was imported (an environment variable set later, e.g. by importing feast, changes nothing)."""
    from prometheus_client import values

    return values.ValueClass is not values.MutexValue


class ServingMetrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.latency = Histogram(
            "sassflow_recommend_latency_seconds",
            "Time to answer one recommendation (features + tower + search); a batch's time is shared "
            "out evenly over its requests", ["scenario"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.stage_seconds = Histogram(
            "sassflow_recommend_stage_seconds", "Time of one stage of the request pipeline (features, recall, "
            "item_features, coarse, fine) per call; a batch runs each stage once for all its requests",
            ["stage"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.requests = Counter(
            "sassflow_recommend_requests_total", "Recommendations served", ["scenario", "fallback"], registry=r
        )
        self.bad_requests = Counter("sassflow_bad_requests_total", "Requests refused with a 4xx", ["reason"], registry=r)
        self.http_requests = Counter(
            "sassflow_http_requests_total", "HTTP requests answered, by route template and status",
            ["endpoint", "method", "status"], registry=r,
        )
        self.http_seconds = Histogram(
            "sassflow_http_request_duration_seconds", "Time from request to the end of the response",
            ["endpoint"], buckets=HTTP_BUCKETS, registry=r,
        )
        self.bundle_info = Gauge(
            "sassflow_bundle_info", "The bundle being served (value 1; with several workers, by any of them)",
            ["bundle_id", "model_version"], registry=r, multiprocess_mode="max",
        )
        self.swaps = Counter("sassflow_bundle_swaps_total", "Bundles swapped in", registry=r)
        self.refused = Counter("sassflow_bundles_refused_total",
                               "Bundles (or bundle pointers) refused by validation", registry=r)
        self.rollbacks = Counter("sassflow_bundle_rollbacks_total", "Rollbacks requested", registry=r)
        self.swap_seconds = Histogram(
            "sassflow_bundle_load_seconds", "Load + validate + warm time of a new bundle",
            buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60, 120), registry=r,
        )
        # the collectors prometheus_client registers on its global registry, here on ours
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)

        self._bundle_labels: tuple[str, str] | None = None
        self._children: dict = {}  # (scenario, fallback) -> (histogram, counter): labels() costs per call
        self._http_children: dict = {}  # (endpoint, method, status) -> (counter, histogram)

    def observe(self, recs, elapsed_s: float) -> None:
        """``recs`` answered together in ``elapsed_s``: each request's share of that time."""
        share = elapsed_s / max(1, len(recs))
        for rec in recs:
            key = (rec.scenario, rec.fallback)
            children = self._children.get(key)
            if children is None:
                children = self._children[key] = (
                    self.latency.labels(rec.scenario), self.requests.labels(rec.scenario, str(rec.fallback).lower()))
            children[0].observe(share)
            children[1].inc()

    def observe_http(self, endpoint: str, method: str, status: int, elapsed_s: float) -> None:
        key = (endpoint, method, status)
        children = self._http_children.get(key)
        if children is None:
            children = self._http_children[key] = (
                self.http_requests.labels(endpoint, method, str(status)), self.http_seconds.labels(endpoint))
        children[0].inc()
        children[1].observe(elapsed_s)

    def set_bundle(self, bundle_id: str, model_version) -> None:
        if self._bundle_labels is not None and multiprocess():  # clear() cannot reach the shared files
            self.bundle_info.labels(*self._bundle_labels).set(0)
        self.bundle_info.clear()
        self._bundle_labels = (bundle_id, str(model_version))
        self.bundle_info.labels(*self._bundle_labels).set(1)

    def exposition(self) -> bytes:
        """The Prometheus text of this service: its registry, or every worker's counts summed."""
        if not multiprocess():
            return generate_latest(self.registry)
        from prometheus_client import multiprocess as mp

        summed = CollectorRegistry()
        mp.MultiProcessCollector(summed)
        return generate_latest(summed)


def metric_value(text: str, name: str) -> float:
    """The value of sample ``name`` (with its labels, if any: ``name{a="b"}``) in Prometheus text
    ``text``, else 0.0."""
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0
