"""Event sources: a synthetic multi-scenario click stream with planted structure,
and a replay of a MovieLens-format dataset folder.

Both yield ``Event`` objects in event-time order, lazily, so 10M events stream
in constant memory (the synthetic catalogue itself — one small vector per item —
is the only thing held: 1M items × 16 dims ≈ 64 MB).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import pandas as pd

from sassflow.contracts.events import Event
from sassflow.contracts.history import EVENT_COLUMNS
from sassflow.datasets import Dataset


def events_frame(events: Iterable[Event]) -> pd.DataFrame:
    """Events → the offline-history columns (without the kafka_* bookkeeping)."""
    rows = [(e.event_id, e.user_id, e.item_id, e.scenario, e.event_type, e.event_time, e.dwell_ms) for e in events]
    df = pd.DataFrame(rows, columns=EVENT_COLUMNS)
    return df.astype({"event_id": "string", "user_id": "int64", "item_id": "int64", "scenario": "string",
                      "event_type": "string", "event_time": "int64", "dwell_ms": "Int64"})


# --------------------------------------------------------------------------- synthetic


@dataclass
class SyntheticTruth:
    """The planted structure, so tests can check that a model learns it.

    affinity(u, i, s) = (user_shared[u] + user_scenario[s, u]) · item_vec[i]
    Click probability of an impression = sigmoid(click_scale * affinity + click_bias).
    A share ``personalized_share`` of the impressions comes from the user's own interest
    categories (``user_category``: the shared one and this scenario's), the rest by popularity.
    """

    user_shared: np.ndarray  # [U, D]  interests shared by all scenarios
    user_scenario: np.ndarray  # [S, U, D]  scenario-specific taste
    item_vec: np.ndarray  # [I, D]
    item_category: np.ndarray  # [I]
    category_centers: np.ndarray  # [C, D]
    scenario_popularity: np.ndarray  # [S, I] impression probability of each item in each scenario
    user_scenario_mix: np.ndarray  # [U, S]
    click_scale: float
    click_bias: float
    user_category: np.ndarray | None = None  # [S + 1, U]: row 0 the shared interest, row 1 + s scenario s's
    personalized_share: float = 0.0

    def affinity(self, user_ids, item_ids, scenario_index: int) -> np.ndarray:
        u = np.asarray(user_ids)
        i = np.asarray(item_ids)
        user = self.user_shared[u] + self.user_scenario[scenario_index, u]
        return np.einsum("...d,...d->...", user, self.item_vec[i])

    def click_probability(self, user_ids, item_ids, scenario_index: int) -> np.ndarray:
        a = self.affinity(user_ids, item_ids, scenario_index)
        return 1.0 / (1.0 + np.exp(-(self.click_scale * a + self.click_bias)))

    def top_items(self, user_id: int, scenario_index: int, k: int) -> np.ndarray:
        """The k items of highest affinity for a user in a scenario (ground-truth ranking)."""
        scores = self.affinity(np.full(len(self.item_vec), user_id), np.arange(len(self.item_vec)), scenario_index)
        return np.argsort(-scores)[:k]


class SyntheticSource:
    """A deterministic multi-scenario stream.

    Users have latent interests shared across scenarios plus a scenario-specific
    taste (``scenario_specificity`` sets the balance); items belong to categories
    (item vector = category centre + noise) with Zipf popularity, permuted per
    scenario so each surface has its own head.  Each request shows
    ``impressions_per_request`` items: a share ``personalized_share`` of them drawn
    from the user's interest categories (as a live recommender would show them), the
    rest by popularity; each is clicked with probability sigmoid(scale · affinity + bias).
    That share is what makes the structure learnable from a demo's few events per user:
    co-clicks reveal the categories, a user's clicks reveal their interests, and
    popularity alone cannot place them.  Users and items are ids ``0..n-1``; event ids
    are ``syn-<seed>-<request>-<slot>`` (+ ``-c`` for clicks).
    """

    def __init__(
        self,
        n_users: int = 1000,
        n_items: int = 2000,
        n_events: int = 100_000,
        scenarios: list[str] | None = None,
        seed: int = 0,
        dim: int = 16,
        n_categories: int = 20,
        zipf_a: float = 1.1,
        scenario_specificity: float = 0.5,
        impressions_per_request: int = 5,
        personalized_share: float = 0.5,
        click_scale: float = 2.5,
        click_bias: float = -2.0,
        start_ms: int = 1_700_000_000_000,
        mean_gap_ms: float = 50.0,
        chunk_requests: int = 4096,
    ):
        from sassflow.settings import DEFAULT_SCENARIOS

        self.scenarios = list(scenarios or DEFAULT_SCENARIOS)
        self.n_users, self.n_items, self.n_events = n_users, n_items, n_events
        self.seed = seed
        self.impressions_per_request = impressions_per_request
        self.start_ms, self.mean_gap_ms = start_ms, mean_gap_ms
        self.chunk_requests = chunk_requests
        rng = np.random.default_rng(seed)
        S = len(self.scenarios)
        centers = rng.normal(size=(n_categories, dim)) / np.sqrt(dim)
        category = rng.integers(0, n_categories, size=n_items)
        item_vec = (centers[category] + 0.3 * rng.normal(size=(n_items, dim)) / np.sqrt(dim)).astype(np.float32)
        # users: a favourite category shared across scenarios, and one per scenario
        user_category = rng.integers(0, n_categories, size=(S + 1, n_users))
        user_shared = (centers[user_category[0]] * 1.5).astype(np.float32)
        user_scenario = (centers[user_category[1:]] * 1.5 * scenario_specificity).astype(np.float32)
        user_shared *= (1.0 - scenario_specificity)
        ranks = np.arange(1, n_items + 1, dtype=np.float64)
        base = ranks ** (-zipf_a)
        popularity = np.stack([base[rng.permutation(n_items)] for _ in range(S)])
        popularity /= popularity.sum(axis=1, keepdims=True)
        # scenario sizes differ on purpose: the first scenario is the sparsest
        scenario_weight = np.linspace(0.4, 1.6, S)
        mix = rng.dirichlet(np.ones(S), size=n_users) * scenario_weight
        mix /= mix.sum(axis=1, keepdims=True)
        self.truth = SyntheticTruth(
            user_shared=user_shared, user_scenario=user_scenario, item_vec=item_vec,
            item_category=category, category_centers=centers.astype(np.float32),
            scenario_popularity=popularity, user_scenario_mix=mix,
            click_scale=click_scale, click_bias=click_bias,
            user_category=user_category, personalized_share=personalized_share,
        )
        self._pop_cdf = np.cumsum(popularity, axis=1)
        self._mix_cdf = np.cumsum(mix, axis=1)
        self._by_category = np.argsort(category, kind="stable")  # items grouped by category
        self._category_start = np.searchsorted(category[self._by_category], np.arange(n_categories + 1))

    def _personal_items(self, rng, users, scen, shape) -> np.ndarray:
        """Items drawn uniformly from one of the user's interest categories (shared or this
        scenario's, half each) for every slot of ``shape`` [R, K]."""
        own = np.where(rng.random(shape) < 0.5, self.truth.user_category[0, users][:, None],
                       self.truth.user_category[1 + scen, users][:, None])
        lo, hi = self._category_start[own], self._category_start[own + 1]
        empty = hi == lo  # a category with no item: any item
        pick = lo + (rng.random(shape) * np.maximum(hi - lo, 1)).astype(np.int64)
        return np.where(empty, rng.integers(0, self.n_items, size=shape), self._by_category[np.minimum(pick, self.n_items - 1)])

    def _chunks(self) -> Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
        """Vectorised blocks of requests: (first_request, users, scenarios, items[R,K], clicked[R,K], times[R])."""
        truth = self.truth
        K = self.impressions_per_request
        request = 0
        t = float(self.start_ms)
        while True:
            rng = np.random.default_rng((self.seed, request))
            R = self.chunk_requests
            users = rng.integers(0, self.n_users, size=R)
            scen = (rng.random(R)[:, None] > self._mix_cdf[users]).sum(axis=1)
            scen = np.minimum(scen, len(self.scenarios) - 1)
            u = rng.random((R, K))
            items = np.empty((R, K), dtype=np.int64)
            for s in range(len(self.scenarios)):
                rows = scen == s
                if rows.any():
                    items[rows] = np.searchsorted(self._pop_cdf[s], u[rows] * self._pop_cdf[s, -1])
            items = np.minimum(items, self.n_items - 1)
            if truth.personalized_share > 0:
                personal = rng.random((R, K)) < truth.personalized_share
                items = np.where(personal, self._personal_items(rng, users, scen, (R, K)), items)
            affinity = np.einsum(
                "rd,rkd->rk",
                truth.user_shared[users] + truth.user_scenario[scen, users],
                truth.item_vec[items],
            )
            p_click = 1.0 / (1.0 + np.exp(-(truth.click_scale * affinity + truth.click_bias)))
            clicked = rng.random((R, K)) < p_click
            gaps = 2.0 + rng.exponential(self.mean_gap_ms, size=R)  # > 1 ms: clicks land at t + 1
            times = (t + np.cumsum(gaps)).astype(np.int64)
            t = float(times[-1])
            yield request, users, scen, items, clicked, times
            request += R

    def launch_new_items(self, share: float, at_event: int) -> set[int]:
        """Hold a seeded ``share`` of the items back until the stream has yielded ``at_event`` events
        (slots showing one before then are left out): items that arrive mid-stream, as a catalogue
        grows.  Returns their ids."""
        rng = np.random.default_rng((self.seed, 11))
        self.new_items = set(rng.choice(self.n_items, size=int(share * self.n_items), replace=False).tolist())
        self.launch_at = at_event
        return set(self.new_items)

    new_items: set = set()
    launch_at: int = 0

    def events(self, limit: int | None = None) -> Iterator[Event]:
        """Impressions then, for clicked slots, a click 1–30 s later (kept in time order per request)."""
        limit = self.n_events if limit is None else min(limit, self.n_events)
        produced = 0
        names = self.scenarios
        for first, users, scen, items, clicked, times in self._chunks():
            for r in range(len(users)):
                req = first + r
                u, s, t = int(users[r]), names[scen[r]], int(times[r])
                hidden = {k for k in range(items.shape[1])
                          if produced < self.launch_at and int(items[r, k]) in self.new_items}
                for k in range(items.shape[1]):
                    if k in hidden:
                        continue
                    if produced >= limit:
                        return
                    yield Event.model_construct(
                        event_id=f"syn-{self.seed}-{req}-{k}", user_id=u, item_id=int(items[r, k]),
                        scenario=s, event_type="impression", event_time=t, dwell_ms=None, context=None,
                    )
                    produced += 1
                for k in np.flatnonzero(clicked[r]):
                    if k in hidden:
                        continue
                    if produced >= limit:
                        return
                    yield Event.model_construct(
                        event_id=f"syn-{self.seed}-{req}-{k}-c", user_id=u, item_id=int(items[r, k]),
                        scenario=s, event_type="click", event_time=t + 1, dwell_ms=int(1000 + 1000 * k),
                        context=None,
                    )
                    produced += 1


# --------------------------------------------------------------------------- MovieLens


class MovieLensSource:
    """Replays a dataset folder in time order (the rule that turns ratings into events, and the
    folder format, are ``sassflow.datasets``'); each event keeps its rating in ``context``."""

    def __init__(self, folder: Path, scenarios_file: Path | None = None):
        self.dataset = Dataset(folder, scenarios_file)
        self.scenarios = self.dataset.scenarios

    @cached_property
    def n_events(self) -> int:
        return self.dataset.n_events()

    def events(self, limit: int | None = None) -> Iterator[Event]:
        produced = 0
        for frame in self.dataset.iter_event_frames():
            cols = [frame[c].tolist() for c in ("event_id", "user_id", "item_id", "scenario", "event_type",
                                                 "event_time", "rating")]
            for eid, u, i, s, kind, t, r in zip(*cols):
                if limit is not None and produced >= limit:
                    return
                yield Event.model_construct(event_id=eid, user_id=u, item_id=i, scenario=s, event_type=kind,
                                            event_time=t, dwell_ms=None, context={"rating": r})
                produced += 1
