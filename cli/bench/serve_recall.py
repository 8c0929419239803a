"""The recall branches in `sassflow bench serve`: structures for the synthetic catalog, built by the
product's pure code from the synthetic users' clicks and stored where the service reads them, and
the per-stage latency read back from the service's histograms."""
from __future__ import annotations

import time

import numpy as np


def prepare_recall(settings, users: dict, n_items: int, dim: int, seed: int, progress=print) -> dict:
    """Every synthetic user's clicks (``synthetic_users``), spread over the last hour, through
    ``streaming.recall_structures`` into the configured recall store; item tags = catalog topics."""
    from features.recall_store import open_recall_store
    from sassflow.contracts.recall import write_item_tags
    from serving.synthetic import synthetic_catalog
    from streaming.aggregate import Ev
    from streaming.recall_structures import RecallParams, RecallStructures

    t0 = time.perf_counter()
    catalog = synthetic_catalog(n_items, dim, settings.scenarios, seed)
    tags = {int(i): (f"topic{t}",) for c in catalog.values() for i, t in zip(c.item_ids, c.topics)}
    write_item_tags(settings.recall.catalog_dir, {i: list(t) for i, t in tags.items()})
    structures = RecallStructures(RecallParams.from_settings(settings), tags)
    now = int(time.time() * 1000)
    rng = np.random.default_rng(seed + 7)
    clicks = 0
    from tqdm import tqdm

    for (user, scenario), items in tqdm(users.items(), desc="recall structures", unit="user", mininterval=2):
        start = now - int(rng.integers(60_000, 3_600_000))
        for n, item in enumerate(items):
            structures.add(Ev(f"b-{user}-{scenario}-{n}", user, int(item), scenario, True, start + 1000 * n))
            clicks += 1
    rows = structures.all_rows()
    store = open_recall_store(settings)
    keys = sorted(rows)
    for lo in range(0, len(keys), 5000):
        store.write({k: rows[k] for k in keys[lo:lo + 5000]})
    progress(f"recall structures: {clicks} clicks -> {len(rows)} rows in {time.perf_counter() - t0:.1f}s")
    return {"clicks": clicks, "rows": len(rows), "seconds": time.perf_counter() - t0}


_STAGE_FAMILIES = {  # histogram family -> how a sample names its stage
    "sassflow_recall_branch_seconds": lambda labels: labels["branch"],
    "sassflow_recall_merge_seconds": lambda labels: "merge",
    "sassflow_recommend_stage_seconds": lambda labels: labels["stage"],  # features, recall, item_features, coarse, fine
    "sassflow_recommend_latency_seconds": lambda labels: "request",
}


def stage_p99_ms(metrics_text: str, q: float = 0.99) -> dict[str, float | None]:
    """The q-quantile (ms) of each request-pipeline stage (every recall branch, the merge, the
    pipeline's stages, the whole request) from the service's histograms: linear within the bucket
    that holds it (Prometheus' estimate); series of one stage (e.g. per scenario) are summed."""
    from prometheus_client.parser import text_string_to_metric_families

    buckets: dict[str, dict[float, float]] = {}
    for family in text_string_to_metric_families(metrics_text):
        stage_of = _STAGE_FAMILIES.get(family.name)
        for sample in family.samples if stage_of else ():
            if sample.name.endswith("_bucket"):
                per = buckets.setdefault(stage_of(sample.labels), {})
                le = float(sample.labels["le"])
                per[le] = per.get(le, 0.0) + sample.value
    return {stage: _quantile_ms(sorted(per.items()), q) for stage, per in buckets.items()}


def _quantile_ms(rows: list[tuple[float, float]], q: float) -> float | None:
    total = rows[-1][1] if rows else 0.0
    target, prev_le, prev_n = q * total, 0.0, 0.0
    for le, n in rows if total else ():
        if n >= target:
            upper = le if le != float("inf") else prev_le
            return 1000 * (prev_le + (upper - prev_le) * ((target - prev_n) / max(n - prev_n, 1e-9)))
        prev_le, prev_n = le, n
    return None
