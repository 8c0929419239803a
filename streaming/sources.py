"""Event sources: a synthetic multi-scenario click stream with planted structure,
and a replay of a MovieLens-format dataset folder.

Both yield ``Event`` objects in event-time order, lazily, so 10M events stream
in constant memory (the synthetic catalogue itself — one small vector per item —
is the only thing held: 1M items × 16 dims ≈ 64 MB).
"""
from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import pandas as pd

from streaming.events import Event

EVENT_COLUMNS = ["event_id", "user_id", "item_id", "scenario", "event_type", "event_time", "dwell_ms"]


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
    ``impressions_per_request`` items drawn by popularity; each is clicked with
    probability sigmoid(scale · affinity + bias).  Users and items are ids
    ``0..n-1``; event ids are ``syn-<seed>-<request>-<slot>`` (+ ``-c`` for clicks).
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
        # users: a few favourite categories, shared across scenarios
        user_shared = (centers[rng.integers(0, n_categories, size=n_users)] * 1.5).astype(np.float32)
        user_scenario = np.stack([
            (centers[rng.integers(0, n_categories, size=n_users)] * 1.5 * scenario_specificity).astype(np.float32)
            for _ in range(S)
        ])
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
        )
        self._pop_cdf = np.cumsum(popularity, axis=1)
        self._mix_cdf = np.cumsum(mix, axis=1)

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

    def events(self, limit: int | None = None) -> Iterator[Event]:
        """Impressions then, for clicked slots, a click 1–30 s later (kept in time order per request)."""
        limit = self.n_events if limit is None else min(limit, self.n_events)
        produced = 0
        names = self.scenarios
        for first, users, scen, items, clicked, times in self._chunks():
            for r in range(len(users)):
                req = first + r
                u, s, t = int(users[r]), names[scen[r]], int(times[r])
                for k in range(items.shape[1]):
                    if produced >= limit:
                        return
                    yield Event.model_construct(
                        event_id=f"syn-{self.seed}-{req}-{k}", user_id=u, item_id=int(items[r, k]),
                        scenario=s, event_type="impression", event_time=t, dwell_ms=None, context=None,
                    )
                    produced += 1
                for k in np.flatnonzero(clicked[r]):
                    if produced >= limit:
                        return
                    yield Event.model_construct(
                        event_id=f"syn-{self.seed}-{req}-{k}-c", user_id=u, item_id=int(items[r, k]),
                        scenario=s, event_type="click", event_time=t + 1, dwell_ms=int(1000 + 1000 * k),
                        context=None,
                    )
                    produced += 1


# --------------------------------------------------------------------------- MovieLens


def load_scenario_groups(scenarios_file: Path) -> list[dict]:
    spec = json.loads(Path(scenarios_file).read_text())
    return sorted(spec["scenarios"], key=lambda g: g["id"])


def item_scenarios(movies: pd.DataFrame, groups: list[dict]) -> pd.Series:
    """item_id → scenario name: the first group, in file order, sharing a genre; else the last group."""
    names = [g["name"] for g in groups]

    def pick(genres: str) -> str:
        gs = set(str(genres).split("|"))
        for g in groups:
            if gs & set(g["genres"]):
                return g["name"]
        return names[-1]

    return pd.Series([pick(g) for g in movies["genres"]], index=movies["item_id"].astype("int64"))


class MovieLensSource:
    """Replays a dataset folder (ratings.csv.gz, movies.csv, users.csv) in time order.

    Every rating is an impression in its movie's scenario; a rating ≥ 4 is also a
    click (same timestamp, after the impression).  event_time = timestamp × 1000.
    """

    def __init__(self, folder: Path, scenarios_file: Path | None = None, click_threshold: int = 4):
        self.folder = Path(folder)
        for name in ("ratings.csv.gz", "movies.csv"):
            if not (self.folder / name).exists():
                raise FileNotFoundError(f"{self.folder} is not a dataset folder: {name} is missing")
        scenarios_file = scenarios_file or next(
            (p for p in (self.folder / "scenarios.json", self.folder.parent / "scenarios.json") if p.exists()), None)
        if scenarios_file is None:
            raise FileNotFoundError(f"no scenarios.json beside {self.folder}; pass scenarios_file")
        self.groups = load_scenario_groups(scenarios_file)
        self.scenarios = [g["name"] for g in self.groups]
        movies = pd.read_csv(self.folder / "movies.csv")
        self.item_scenario = item_scenarios(movies, self.groups)
        self.click_threshold = click_threshold

    @cached_property
    def n_events(self) -> int:
        """Events the full replay yields: one impression per rating, plus a click per rating ≥ threshold."""
        ratings = pd.read_csv(self.folder / "ratings.csv.gz", usecols=["rating"])["rating"]
        return len(ratings) + int((ratings >= self.click_threshold).sum())

    def ratings(self, chunksize: int = 200_000) -> Iterator[pd.DataFrame]:
        with gzip.open(self.folder / "ratings.csv.gz", "rt") as fh:
            yield from pd.read_csv(fh, chunksize=chunksize)

    def frame(self) -> pd.DataFrame:
        """All events at once, vectorised (what training and the benchmarks use)."""
        r = pd.concat(self.ratings(), ignore_index=True)
        r = r.sort_values("timestamp", kind="stable")
        scen = self.item_scenario.reindex(r["item_id"].to_numpy()).fillna(self.scenarios[-1]).to_numpy()
        base = "ml-" + r["user_id"].astype(str) + "-" + r["item_id"].astype(str) + "-" + r["timestamp"].astype(str)
        imp = pd.DataFrame({"event_id": base + "-i", "user_id": r["user_id"].to_numpy(), "item_id": r["item_id"].to_numpy(),
                            "scenario": scen, "event_type": "impression", "event_time": r["timestamp"].to_numpy() * 1000,
                            "rating": r["rating"].to_numpy(), "_order": np.arange(len(r)) * 2})
        clk = imp[imp["rating"] >= self.click_threshold].copy()
        clk["event_id"] = base[imp["rating"].to_numpy() >= self.click_threshold].to_numpy() + "-c"
        clk["event_type"] = "click"
        clk["_order"] += 1
        df = pd.concat([imp, clk]).sort_values("_order").drop(columns=["_order", "rating"]).reset_index(drop=True)
        df["dwell_ms"] = pd.array([pd.NA] * len(df), dtype="Int64")
        return df.astype({"event_id": "string", "user_id": "int64", "item_id": "int64", "scenario": "string",
                          "event_type": "string", "event_time": "int64"})[EVENT_COLUMNS]

    def events(self, limit: int | None = None) -> Iterator[Event]:
        produced = 0
        for chunk in self.ratings():
            users = chunk["user_id"].to_numpy()
            items = chunk["item_id"].to_numpy()
            ratings = chunk["rating"].to_numpy()
            times = chunk["timestamp"].to_numpy()
            scen = self.item_scenario.reindex(items).fillna(self.scenarios[-1]).to_numpy()
            for u, i, r, t, s in zip(users.tolist(), items.tolist(), ratings.tolist(), times.tolist(), scen.tolist()):
                base = f"ml-{u}-{i}-{t}"
                for kind in (("impression", "-i"), ("click", "-c")) if r >= self.click_threshold else (("impression", "-i"),):
                    if limit is not None and produced >= limit:
                        return
                    yield Event.model_construct(
                        event_id=base + kind[1], user_id=u, item_id=i, scenario=s, event_type=kind[0],
                        event_time=t * 1000, dwell_ms=None, context={"rating": r},
                    )
                    produced += 1
