"""Synthetic catalogs and users for tests and benchmarks (no trained model needed).

Item vectors follow a low-rank cluster model, the shape learned two-tower
embeddings have: a few latent factors, items grouped around topic centres,
a little full-rank noise.  Items are split over the scenarios (each item lives
in one scenario, like a movie in its genre's scenario).  A synthetic user
clicked a handful of items of one topic, so the mean-history tower has
something to find.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LATENT_DIM = 16
ITEMS_PER_TOPIC = 500


@dataclass
class SyntheticScenario:
    item_ids: np.ndarray  # int64 [n]
    vectors: np.ndarray  # float32 [n, d], unit norm
    topics: np.ndarray  # int64 [n]
    popular: np.ndarray  # int64, raw ids by popularity, descending


def synthetic_catalog(n_items: int, dim: int, scenarios: list[str], seed: int) -> dict[str, SyntheticScenario]:
    """``n_items`` items over ``scenarios``; raw ids are 1..n_items (scenario s holds ids ≡ s mod S)."""
    rng = np.random.default_rng(seed)
    latent_dim = min(LATENT_DIM, dim)
    projection = rng.standard_normal((latent_dim, dim)).astype(np.float32)
    catalog = {}
    for si, scenario in enumerate(scenarios):
        ids = np.arange(si + 1, n_items + 1, len(scenarios), dtype=np.int64)
        n = len(ids)
        n_topics = max(1, n // ITEMS_PER_TOPIC)
        centres = rng.standard_normal((n_topics, latent_dim)).astype(np.float32)
        topics = rng.integers(0, n_topics, n)
        latent = centres[topics] + 0.5 * rng.standard_normal((n, latent_dim), dtype=np.float32)
        vectors = latent @ projection + 0.5 * rng.standard_normal((n, dim), dtype=np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        popularity = rng.pareto(1.2, n)
        popular = ids[np.argsort(-popularity, kind="stable")[: min(n, 1000)]]
        catalog[scenario] = SyntheticScenario(ids, vectors.astype(np.float32), topics.astype(np.int64), popular)
    return catalog


def synthetic_users(
    catalog: dict[str, SyntheticScenario], n_users: int, seed: int, max_clicks: int = 20
) -> dict[tuple[int, str], list[int]]:
    """``{(user_id, scenario): recent click ids}``; user ids 1..n_users, each active in every scenario."""
    rng = np.random.default_rng(seed + 1)
    table = {}
    for scenario, sc in catalog.items():
        by_topic = np.argsort(sc.topics, kind="stable")
        starts = np.searchsorted(sc.topics[by_topic], np.arange(sc.topics.max() + 2))
        for user in range(1, n_users + 1):
            t = int(rng.integers(0, sc.topics.max() + 1))
            members = by_topic[starts[t] : starts[t + 1]]
            if members.size == 0:
                continue
            n_clicks = int(rng.integers(1, max_clicks + 1))
            table[(user, scenario)] = sc.item_ids[rng.choice(members, size=min(n_clicks, members.size), replace=False)].tolist()
    return table


def synthetic_rankers(out_dir, catalog: dict[str, SyntheticScenario], seed: int, seq_len: int = 20):
    """Untrained coarse + fine rankers over the catalog's items, marked as included: what a trained
    ranker costs at serving (benchmarks) and a ranker artifact to serve (tests), not a quality claim.
    Residual like trained ones, with random corrections (zero ones would serve the recall order), and
    a co-click table of items of the same topic clicked one after the other."""
    import torch

    from training.co_click import co_click_table
    from training.rankers import RECALL_BRANCHES, CoarseRanker, FineRanker, RankerConfig, save_rankers

    torch.manual_seed(seed)
    item_ids = np.sort(np.concatenate([c.item_ids for c in catalog.values()]))
    cfg = RankerConfig(n_items=len(item_ids), n_scenarios=len(catalog), seq_len=seq_len,
                       branches=list(RECALL_BRANCHES), residual=True)
    clicks = np.zeros((len(catalog), len(item_ids) + 1), np.int64)
    for s, c in enumerate(catalog.values()):  # popularity: the catalog's popular list, best first
        clicks[s, np.searchsorted(item_ids, c.popular) + 1] = np.arange(len(c.popular), 0, -1)
    coarse, fine = CoarseRanker(cfg).eval(), FineRanker(cfg).eval()
    for mlp in (coarse.mlp, fine.mlp):
        torch.nn.init.normal_(mlp[-1].weight, std=0.1)
    # one pseudo-user per (scenario, topic) clicking its items in id order
    users = np.concatenate([c.topics + t * 1_000_000 for t, c in enumerate(catalog.values())])
    items = np.searchsorted(item_ids, np.concatenate([c.item_ids for c in catalog.values()])) + 1
    co_clicks = co_click_table(users, items, np.arange(len(items)), len(item_ids))
    return save_rankers(out_dir, cfg, coarse, fine, item_ids, clicks, co_clicks,
                        extra={"included": True, "reason": "synthetic rankers (untrained)", "gate_metrics": {},
                               "scenarios": list(catalog)})
