"""Metrics of the recall branches, registered on the service's registry."""
from __future__ import annotations

from prometheus_client import Counter, Histogram

from serving.metrics import LATENCY_BUCKETS


class BranchMetrics:
    def __init__(self, registry):
        self.seconds = Histogram("sassflow_recall_branch_seconds", "Time of one recall branch for one scenario's requests",
                                 ["branch"], buckets=LATENCY_BUCKETS, registry=registry)
        self.skipped = Counter("sassflow_recall_branch_skipped_total",
                               "Branch answers dropped: the branch failed (error) or ran past its budget (timeout)",
                               ["branch", "reason"], registry=registry)
        self.merge_seconds = Histogram("sassflow_recall_merge_seconds", "Time to merge one scenario's branch lists",
                                       buckets=LATENCY_BUCKETS, registry=registry)
