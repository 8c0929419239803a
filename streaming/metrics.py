"""Prometheus metrics of the ingest consumers (``prometheus_client`` on
``settings.streaming.metrics_port``; process i of an ingest run serves on port + i, 0 = off)."""
from __future__ import annotations

import logging

from prometheus_client import Counter, Gauge, Histogram, start_http_server

EVENTS_IN = Counter("sassflow_ingest_events_in_total", "records read from Kafka", ["stage"])
APPLIED = Counter("sassflow_ingest_events_applied_total", "valid events applied to features", ["stage"])
DEAD_LETTERED = Counter("sassflow_ingest_dead_lettered_total", "malformed events sent to the DLQ", ["reason"])
DUPLICATES = Counter("sassflow_ingest_duplicates_total",
                     "events whose event_id was already applied within the dedup horizon (dropped)", ["stage"])
UNDECODABLE = Counter("sassflow_ingest_undecodable_records_total",
                      "records of batches the client could not decode (quarantined to the DLQ)", ["stage"])
LATE = Counter("sassflow_ingest_late_events_total",
               "events older than the partition's newest event time minus allowed lateness")
LAG = Gauge("sassflow_ingest_consumer_lag", "high water mark minus position", ["stage", "partition"])
BATCH_SECONDS = Histogram("sassflow_ingest_batch_seconds", "micro-batch processing time", ["stage"],
                          buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
FRESHNESS_SECONDS = Histogram("sassflow_ingest_freshness_seconds",
                              "record timestamp (produce time) to online-store write", ["stage"],
                              buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60))
RECALL_NOT_APPLIED = Counter("sassflow_recall_events_not_applied_total",
                             "clicks the recall stage did not apply (duplicate, too_late)", ["reason"])
RESTORE_SECONDS = Histogram("sassflow_ingest_restore_seconds",
                            "a state owner's restore on assignment, until its input resumes (source: cache, "
                            "cache+changelog, changelog)", ["stage", "source"],
                            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300))
RESTORED_RECORDS = Counter("sassflow_ingest_restored_records_total", "changelog records read by restores", ["stage"])
CHANGELOG_RECORDS = Counter("sassflow_ingest_changelog_records_total",
                            "state changes committed to the changelog", ["stage"])
RETRIES = Counter("sassflow_ingest_retries_total", "store/broker operations retried", ["operation"])


def serve(port: int) -> None:
    """The Prometheus endpoint on ``port`` (0: none).  A port another process holds costs the
    endpoint, not the consumer: the stage logs it and goes on (its metrics stay in-process)."""
    if port:
        try:
            start_http_server(port, addr="127.0.0.1")
        except OSError as exc:
            logging.getLogger("sassflow.ingest").warning(
                "metrics endpoint not started on 127.0.0.1:%d (%s); set streaming.metrics_port", port, exc)
