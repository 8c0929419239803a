"""Prometheus metrics of the service (one registry per service, so tests can run several)."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5, 1.0)


class ServingMetrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.latency = Histogram(
            "sassflow_recommend_latency_seconds", "Time to answer one recommendation (features + tower + search)",
            ["scenario"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.requests = Counter(
            "sassflow_recommend_requests_total", "Recommendations served", ["scenario", "fallback"], registry=r
        )
        self.bad_requests = Counter("sassflow_bad_requests_total", "Requests refused with a 4xx", ["reason"], registry=r)
        self.bundle_info = Gauge(
            "sassflow_bundle_info", "The bundle being served (value 1)", ["bundle_id", "model_version"], registry=r
        )
        self.swaps = Counter("sassflow_bundle_swaps_total", "Bundles swapped in", registry=r)
        self.refused = Counter("sassflow_bundles_refused_total", "Bundles refused by validation", registry=r)
        self.rollbacks = Counter("sassflow_bundle_rollbacks_total", "Rollbacks requested", registry=r)
        self.swap_seconds = Histogram(
            "sassflow_bundle_load_seconds", "Load + validate + warm time of a new bundle",
            buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60, 120), registry=r,
        )

        self._children: dict = {}  # (scenario, fallback) -> (histogram, counter): labels() costs per call

    def observe(self, recs, elapsed_s: float) -> None:
        for rec in recs:
            key = (rec.scenario, rec.fallback)
            children = self._children.get(key)
            if children is None:
                children = self._children[key] = (
                    self.latency.labels(rec.scenario), self.requests.labels(rec.scenario, str(rec.fallback).lower()))
            children[0].observe(elapsed_s)
            children[1].inc()

    def set_bundle(self, bundle_id: str, model_version) -> None:
        self.bundle_info.clear()
        self.bundle_info.labels(bundle_id=bundle_id, model_version=str(model_version)).set(1)


def metric_value(text: str, name: str) -> float:
    """The value of sample ``name`` (with its labels, if any: ``name{a="b"}``) in Prometheus text
    ``text``, else 0.0."""
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0
