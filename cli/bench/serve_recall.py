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


def stage_p99_ms(metrics_text: str) -> dict[str, float | None]:
    """p99 (upper bucket bound, ms) of each branch and of the merge, from the service's histograms."""
    from prometheus_client.parser import text_string_to_metric_families

    buckets: dict[str, list[tuple[float, float]]] = {}
    for family in text_string_to_metric_families(metrics_text):
        if family.name not in ("sassflow_recall_branch_seconds", "sassflow_recall_merge_seconds",
                               "sassflow_recommend_latency_seconds"):
            continue
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                stage = sample.labels.get("branch") or ("merge" if "merge" in family.name else "request")
                buckets.setdefault(stage, []).append((float(sample.labels["le"]), sample.value))
    out = {}
    for stage, bs in buckets.items():
        bs.sort()
        merged: dict[float, float] = {}
        for le, v in bs:  # the request histogram has one series per scenario: sum them
            merged[le] = merged.get(le, 0.0) + v
        total = merged.get(float("inf"), 0.0)
        bound = next((le for le, v in sorted(merged.items()) if total and v >= 0.99 * total), None)
        out[stage] = None if bound is None or bound == float("inf") else bound * 1000
    return out
