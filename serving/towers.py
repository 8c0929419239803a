"""User towers the service runs at request time: a feature row in, a query vector out.

``load_tower(tower_dir, config, catalogs)`` dispatches on ``config["kind"]``:

* the training kinds (``"sass"``, ``"two_tower"``) -> ``SassUserTower``: the trained model's user
  tower (``training.model``, rebuilt by ``training.export.load_model``) fed from the online
  feature row;
* ``"mean_history"`` -> ``MeanHistoryTower``, a real, parameter-free tower owned by serving for
  synthetic catalogs and benchmarks: the normalised mean of the scenario's item vectors of the
  user's ``recent_clicks``;
* ``"popularity"`` -> ``PopularityTower``: the bundle published while no model has passed the
  quality gate (``serving.fallback``); it places nobody, so every answer is the popular fallback.

Every tower has ``encode(rows, scenario) -> float32 [B, d]``.  A row the tower cannot place (no
known clicks) encodes to the zero vector; the service answers those with the popular fallback.
``nonfinite_weights()`` names the parameters holding NaN/inf (a bundle with any is refused).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from serving.index import ScenarioCatalog, item_vectors

MEAN_HISTORY = "mean_history"
POPULARITY = "popularity"


class PopularityTower:
    """No model: every row encodes to the zero vector, so the popular fallback answers it."""

    encodes = False  # zero vectors are its answer, not a broken model (``bundle_reader.smoke_test``)

    def __init__(self, dim: int):
        self.dim = dim

    def encode(self, rows: list[dict], scenario: str) -> np.ndarray:
        return np.zeros((len(rows), self.dim), dtype=np.float32)

    def nonfinite_weights(self) -> list[str]:
        return []  # no parameters


class MeanHistoryTower:
    def __init__(self, catalogs: dict[str, ScenarioCatalog], dim: int):
        self.catalogs = catalogs
        self.dim = dim

    def encode(self, rows: list[dict], scenario: str) -> np.ndarray:
        catalog = self.catalogs[scenario]
        out = np.zeros((len(rows), self.dim), dtype=np.float32)
        for i, row in enumerate(rows):
            clicks = row.get("recent_clicks") or []
            item_rows = catalog.rows_of(clicks)
            if item_rows.size:
                v = item_vectors(catalog.index, item_rows).mean(axis=0)
                norm = float(np.linalg.norm(v))
                if norm > 0:
                    out[i] = v / norm
        return out

    def nonfinite_weights(self) -> list[str]:
        return []  # no parameters: the item vectors it averages are checked with the index


class SassUserTower:
    """The trained user tower over online rows: ids through the artifact's vocabularies (unknown ->
    the out-of-vocabulary row), click sequences cut to the model's length, the scenario's share."""

    def __init__(self, model, config: dict, user_ids: np.ndarray, item_ids: np.ndarray):
        from training.vocab import Vocab

        self.model, self.config = model, config
        self.scenarios: list[str] = config["scenarios"]
        self.seq_len: int = config["seq_len"]
        self.dim: int = config["dim"]
        self.users, self.items = Vocab(user_ids), Vocab(item_ids)

    def _seq(self, rows, name) -> np.ndarray:
        out = np.zeros((len(rows), self.seq_len), np.int64)
        for r, row in enumerate(rows):
            seq = [x for x in list(row.get(name) or [])[: self.seq_len] if x is not None]
            if seq:
                out[r, : len(seq)] = self.items.index(np.asarray(seq, np.int64))  # unknown -> 0 = padding
        return out

    def nonfinite_weights(self) -> list[str]:
        import torch

        return [name for name, t in self.model.state_dict().items()
                if t.is_floating_point() and not bool(torch.isfinite(t).all())]

    def encode(self, rows: list[dict], scenario: str) -> np.ndarray:
        import torch

        if scenario not in self.scenarios:
            raise ValueError(f"unknown scenario {scenario!r}; the model knows {self.scenarios}")
        S, B = len(self.scenarios), len(rows)
        share = np.zeros((B, S), np.float32)
        for r, row in enumerate(rows):
            v = row.get("scenario_click_share")
            if v is not None and len(v) == S:
                share[r] = [0.0 if x is None else float(x) for x in v]
        uid = np.asarray([row.get("user_id") if row.get("user_id") is not None else -1 for row in rows], np.int64)
        f = {"user": torch.from_numpy(self.users.index(uid)),
             "scenario": torch.full((B,), self.scenarios.index(scenario), dtype=torch.long),
             "recent_clicks": torch.from_numpy(self._seq(rows, "recent_clicks")),
             "recent_clicks_all": torch.from_numpy(self._seq(rows, "recent_clicks_all")),
             "scenario_click_share": torch.from_numpy(share)}
        with torch.no_grad():
            u, _ = self.model.encode_user(f)
        return u.numpy().astype(np.float32)


def load_sass_tower(tower_dir) -> SassUserTower:
    """The user tower of a model artifact folder (or a bundle's ``tower/``)."""
    from training.export import load_model, load_vocab

    model, cfg = load_model(tower_dir)
    return SassUserTower(model, cfg, *load_vocab(tower_dir, cfg))


def load_tower(tower_dir: Path, config: dict, catalogs: dict[str, ScenarioCatalog]):
    """The user tower of a bundle; ``catalogs`` (its loaded indexes) lets the mean-history tower use
    the index's vectors instead of loading them twice."""
    kind = config.get("kind")
    if kind == MEAN_HISTORY:
        return MeanHistoryTower(catalogs, int(config["dim"]))
    if kind == POPULARITY:
        return PopularityTower(int(config["dim"]))
    if not kind:
        raise ValueError("tower config has no 'kind'")
    return load_sass_tower(tower_dir)
