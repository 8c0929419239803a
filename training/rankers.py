"""The ranking models (coarse and fine) and the one definition of what they read: the model code that
serving runs at request time, as ``training.model`` is for recall.

Inputs of one candidate (all as of the request, nothing of the candidate's own impression):

* ``dense``: the user's window features in the scenario and across scenarios, the candidate item's
  window features in the scenario (``sassflow.contracts.features``: counts, CTRs, ``trending``), its
  recall score, its co-click weights from the user's recent clicks (``CO_CLICK_COLUMNS``) and its recall
  branch (one-hot over ``RankerConfig.branches``).  ``dense_matrix``
  turns named columns into this matrix, the same way for the training lists (``training.ranking_data``)
  and for online rows (``serving.ranking``);
* the candidate's item id, the scenario, and the user's two click sequences (this scenario, all
  scenarios; ``recent_clicks`` / ``recent_clicks_all``).

A candidate's score is a function of these inputs only: never of the other candidates of the request
(no list position, no normalisation over the list), so a ranker may score any subset in any order.

- ``CoarseRanker``: a small MLP over ``dense`` and the scenario: cheap enough for every merged
  candidate (~500), it keeps the best ~100.
- ``FineRanker`` (BST/DIN style): the item embedding of the two click sequences (position and segment
  embeddings, a learned "no history" token) through one transformer encoder layer, once per request;
  the candidate's embedding (+ scenario) attends over that encoded sequence (target attention), and
  an MLP reads [candidate, attended interest, their product, dense, scenario].

With ``RankerConfig.residual`` the coarse logit is a learned weight x the recall score + the MLP's
output, and the fine logit is the candidate's coarse logit (``base``) + the fine MLP's output.

Both standardise ``dense`` with the training rows' mean and std, kept as buffers in the state_dict.
Files: ``RankerArtifact`` (``sassflow.contracts.artifacts``); loading uses ``weights_only=True`` and
checks every tensor's shape against the config, like ``training.export.load_model``.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from sassflow.contracts.artifacts import RankerArtifact
from sassflow.contracts.features import (HOUR_MS, ITEM_SCENARIO_STATS, MINUTE_MS, SINCE_CLICK, USER_SCENARIO_STATS,
                                         WINDOW_7D)
from training.co_click import CoClicks
from training.export import ArtifactError, load_state_into

# The named columns behind ``dense`` (user_* and item_* come from the feature contract's derived
# window features; ``user_scenario_share`` is the request scenario's entry of scenario_click_share).
USER_WINDOW = tuple(f.name for f in USER_SCENARIO_STATS.derived)
USER_PROFILE = ("total_imp_7d", "total_clk_7d")
ITEM_WINDOW = tuple(f.name for f in ITEM_SCENARIO_STATS.derived)
USER_COLUMNS = tuple(f"user_{n}" for n in USER_WINDOW + USER_PROFILE) + ("user_scenario_share",)
ITEM_COLUMNS = tuple(f"item_{n}" for n in ITEM_WINDOW)
RECALL_SCORE = "recall_score"
# The candidate's clicks in the scenario over the recall model's training data (the ranker artifact
# ships them): an all-time popularity prior that the windows (at most 7 days) and a log-q corrected
# recall score both lack.
ITEM_PRIOR = "item_clk_train"
# The candidate's co-click weights (``training.co_click``; the ranker artifact ships the table) from the
# user's recent clicks in every scenario, from the newest few of them, and from the request scenario's:
# the item-to-item transitions a pooled recall vector loses (``co_click_columns``).
CO_CLICK, CO_CLICK_LAST, CO_CLICK_SCENARIO = "co_click", "co_click_last", "co_click_scenario"
CO_CLICK_COLUMNS = (CO_CLICK, CO_CLICK_LAST, CO_CLICK_SCENARIO)
LAST_CLICKS = 3  # the "newest few": the next clicks follow the last ones most closely
ROW_COLUMNS = ITEM_COLUMNS + (ITEM_PRIOR, RECALL_SCORE) + CO_CLICK_COLUMNS  # per candidate; USER_COLUMNS per request
# The recall branches a ranker knows (its branch one-hot), by the names serving's sources carry
# (``serving.recall``: the ANN branch, the popular fallback).  A ranker records its list in its config,
# so serving reads the branches of the ranker it runs; a branch it does not know gets all zeros.
RECALL_BRANCHES = ("sass", "popular")
COUNT_PREFIXES = ("imp_", "clk_", "total_")  # heavy-tailed counts: log1p
SCENARIO_DIM = 8


def co_click_columns(co_clicks: CoClicks, recent: np.ndarray, recent_all: np.ndarray, owner: np.ndarray,
                     item: np.ndarray) -> dict[str, np.ndarray]:
    """CO_CLICK_COLUMNS of candidates ``item`` (vocabulary indices) of requests ``owner``, whose click
    sequences (this scenario's, every scenario's; newest first, 0 = padding) are ``recent[owner]`` and
    ``recent_all[owner]``."""
    every, last = co_clicks.scores_and_head(recent_all, owner, item, LAST_CLICKS)
    return {CO_CLICK: every, CO_CLICK_LAST: last, CO_CLICK_SCENARIO: co_clicks.scores(recent, owner, item)}


def dense_names(branches: list[str]) -> list[str]:
    return list(USER_COLUMNS) + list(ROW_COLUMNS) + [f"branch_{b}" for b in branches]


def _transformed_column(name: str, values) -> np.ndarray:
    """float64: NaN -> 0, counts and co-clicks -> log1p, ``trending`` -> log, the time since the last
    click -> log1p(minutes) (none in 7 days: older than the window)."""
    base = name.split("_", 1)[1] if name.startswith(("user_", "item_")) else name
    x = np.asarray(values, np.float64)
    if base == SINCE_CLICK.name:
        return np.log1p(np.nan_to_num(x, nan=float(WINDOW_7D.span_ms + HOUR_MS)) / MINUTE_MS)
    x = np.nan_to_num(x, nan=0.0)
    if base.startswith(COUNT_PREFIXES) or base in CO_CLICK_COLUMNS:  # heavy tails
        return np.log1p(np.maximum(x, 0.0))
    if base == "trending":
        return np.log(np.maximum(x, 1e-6))
    return x


def _transformed(names: tuple[str, ...], cols: dict[str, np.ndarray], out: np.ndarray | None = None) -> np.ndarray:
    """[n, len(names)] float32 of the transformed columns, one column at a time (into ``out`` if given:
    millions of training rows never hold a float64 copy of the whole matrix)."""
    n = len(cols[names[0]]) if names else 0
    out = np.empty((n, len(names)), np.float32) if out is None else out
    for j, name in enumerate(names):
        out[:, j] = _transformed_column(name, cols[name])
    return out


def dense_matrix(cols: dict[str, np.ndarray], branch: np.ndarray, branches: list[str],
                 user_cols: dict[str, np.ndarray] | None = None, owner: np.ndarray | None = None) -> np.ndarray:
    """float32 [n, len(dense_names)]: ``cols`` holds ROW_COLUMNS (arrays of n rows,
    NaN = no value) and USER_COLUMNS, unless ``user_cols`` gives those per request (candidate i
    belongs to request ``owner[i]``: transformed once per request); ``branch`` the index of each
    candidate's branch in ``branches`` (-1: a branch the ranker does not know, all zeros)."""
    n, nu = len(branch), len(USER_COLUMNS)
    nr = len(ROW_COLUMNS)
    out = np.zeros((n, nu + nr + len(branches)), np.float32)
    if user_cols is None:
        _transformed(USER_COLUMNS, cols, out[:, :nu])
    else:
        out[:, :nu] = _transformed(USER_COLUMNS, user_cols)[owner]
    _transformed(ROW_COLUMNS, cols, out[:, nu:nu + nr])
    known = (branch >= 0) & (branch < len(branches))
    out[np.flatnonzero(known), nu + nr + branch[known]] = 1.0
    return out


@dataclass
class RankerConfig:
    n_items: int  # item vocabulary size (index 0: unknown / padding)
    n_scenarios: int
    seq_len: int
    branches: list[str]
    dim: int = 32
    heads: int = 2
    hidden: list[int] = field(default_factory=lambda: [128, 64])
    coarse_hidden: list[int] = field(default_factory=lambda: [64, 32])
    dropout: float = 0.1
    # Residual formulation: the coarse logit is recall_weight x the recall score + the MLP's correction,
    # and the fine logit is the coarse logit + the fine network's correction; each correction's last
    # layer starts at zero, so an untrained cascade is the recall order and each stage only has to
    # learn where to depart from the one before (a network that must relearn the recall score from a
    # standardised input wastes its few training lists on it).  False: configs written before it.
    residual: bool = False
    recall_weight: float = 1.0  # the initial weight: the recall model's inverse temperature

    @property
    def recall_column(self) -> int:
        return dense_names(self.branches).index(RECALL_SCORE)

    @property
    def n_dense(self) -> int:
        return len(dense_names(self.branches))

    def to_dict(self) -> dict:
        return asdict(self)


def _mlp(dims: list[int], dropout: float = 0.0) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in zip(dims[:-1], dims[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()] + ([nn.Dropout(dropout)] if dropout else [])
    return nn.Sequential(*layers, nn.Linear(dims[-1], 1))


class Standardize(nn.Module):
    """(x - mean) / std with the training rows' statistics (buffers: saved with the weights)."""

    def __init__(self, n: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(n))
        self.register_buffer("std", torch.ones(n))

    def fit(self, x: np.ndarray) -> None:
        std = x.std(0)
        # a column constant in training (a branch no training candidate came from) keeps its scale: a
        # tiny std would blow a serving-time 1 up to thousands
        self.mean.copy_(torch.from_numpy(x.mean(0)).float())
        self.std.copy_(torch.from_numpy(np.where(std > 1e-3, std, 1.0)).float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def _zero_last(mlp: nn.Sequential) -> None:
    """A residual correction starts at zero: the network's last layer outputs 0 until trained."""
    nn.init.zeros_(mlp[-1].weight)
    nn.init.zeros_(mlp[-1].bias)


class CoarseRanker(nn.Module):
    """MLP over the dense features and the scenario: one logit per candidate."""

    def __init__(self, cfg: RankerConfig):
        super().__init__()
        self.cfg = cfg
        self.norm = Standardize(cfg.n_dense)
        self.scenario = nn.Embedding(cfg.n_scenarios, SCENARIO_DIM)
        self.mlp = _mlp([cfg.n_dense + SCENARIO_DIM] + list(cfg.coarse_hidden))
        if cfg.residual:
            _zero_last(self.mlp)
            self.recall_weight = nn.Parameter(torch.tensor(float(cfg.recall_weight)))

    def forward(self, dense: torch.Tensor, scenario: torch.Tensor) -> torch.Tensor:
        logits = self.mlp(torch.cat([self.norm(dense), self.scenario(scenario)], -1)).squeeze(-1)
        if self.cfg.residual:  # the raw recall score (its dense column before standardising)
            logits = logits + self.recall_weight * dense[:, self.cfg.recall_column]
        return logits


class TargetAttention(nn.Module):
    """Multi-head attention from each candidate to its request's encoded sequence.  Keys and values are
    projected once per request, not once per candidate (a request's ~100 candidates share them)."""

    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads, self.head_dim = heads, d // heads
        self.query, self.key, self.value, self.out = (nn.Linear(d, d) for _ in range(4))

    def keys_values(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        split = lambda x: x.unflatten(-1, (self.heads, self.head_dim))  # noqa: E731
        return split(self.key(memory)), split(self.value(memory))

    def forward(self, query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, pad: torch.Tensor,
                owner: torch.Tensor) -> torch.Tensor:
        """query [n, d]; keys/values [B, T, h, d/h]; pad [B, T]; owner [n] -> [n, d].

        The queries are laid out per request ([B, M]: M the most candidates of any request) so that
        each request's keys and values are read in place by one batched product, never copied once
        per candidate."""
        B = keys.shape[0]
        q = self.query(query).unflatten(-1, (self.heads, self.head_dim))
        slot = _slots(owner, B)
        grid = q.new_zeros((B, int(slot.max()) + 1 if len(slot) else 0) + q.shape[1:])
        grid[owner, slot] = q
        logits = torch.einsum("bmhe,bthe->bhmt", grid, keys) / self.head_dim ** 0.5
        weights = torch.softmax(logits.masked_fill(pad[:, None, None, :], float("-inf")), dim=-1)
        attended = torch.einsum("bhmt,bthe->bmhe", weights, values)[owner, slot]  # [n, h, d/h]
        return self.out(attended.flatten(1))


def _slots(owner: torch.Tensor, n_requests: int) -> torch.Tensor:
    """Each candidate's position among its request's candidates (in their order)."""
    order = torch.argsort(owner, stable=True)
    counts = torch.bincount(owner, minlength=n_requests)
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.empty_like(owner)
    slot[order] = torch.arange(len(owner)) - starts[owner[order]]
    return slot


class FineRanker(nn.Module):
    """Target attention from the candidate to the user's transformer-encoded click sequences."""

    def __init__(self, cfg: RankerConfig):
        super().__init__()
        self.cfg = cfg
        d, L = cfg.dim, cfg.seq_len
        self.norm = Standardize(cfg.n_dense)
        self.item = nn.Embedding(cfg.n_items + 1, d, padding_idx=0)
        self.scenario = nn.Embedding(cfg.n_scenarios, d)
        self.position = nn.Embedding(2 * L + 1, d)  # slot 0: the "no history" token
        self.no_history = nn.Parameter(torch.zeros(1, 1, d))
        self.encoder = nn.TransformerEncoderLayer(d, cfg.heads, dim_feedforward=2 * d, dropout=cfg.dropout,
                                                  batch_first=True)
        self.target_attention = TargetAttention(d, cfg.heads)
        self.mlp = _mlp([4 * d + cfg.n_dense] + list(cfg.hidden), cfg.dropout)
        if cfg.residual:
            _zero_last(self.mlp)
        for e in (self.item, self.scenario, self.position):
            nn.init.normal_(e.weight, std=0.05)

    def encode_sequences(self, recent: torch.Tensor, recent_all: torch.Tensor):
        """[B, L] + [B, L] item indices (0 = padding) -> (memory [B, 2L+1, d], padding mask [B, 2L+1])."""
        seq = torch.cat([recent, recent_all], 1)
        items = self.item(seq)
        x = torch.cat([self.no_history.expand(items.shape[0], -1, -1), items], 1)
        x = x + self.position.weight[None, : x.shape[1]]
        pad = torch.cat([torch.zeros_like(seq[:, :1], dtype=torch.bool), seq == 0], 1)
        return self.encoder(x, src_key_padding_mask=pad), pad

    def score(self, memory: torch.Tensor, pad: torch.Tensor, owner: torch.Tensor, item: torch.Tensor,
              scenario: torch.Tensor, dense: torch.Tensor, base: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of n candidates; ``owner`` [n]: the row of ``memory`` (the request) each belongs to;
        ``base`` [n]: their coarse logits, which a residual fine ranker corrects."""
        cand = self.item(item)
        scen = self.scenario(scenario)
        keys, values = self.target_attention.keys_values(memory)
        attended = self.target_attention(cand + scen, keys, values, pad, owner)
        x = torch.cat([cand, attended, cand * attended, scen, self.norm(dense)], -1)
        logits = self.mlp(x).squeeze(-1)
        if not self.cfg.residual:
            return logits
        if base is None:
            raise ValueError("a residual fine ranker corrects the coarse logits: pass them as base")
        return logits + base

    def forward(self, recent, recent_all, owner, item, scenario, dense, base=None) -> torch.Tensor:
        memory, pad = self.encode_sequences(recent, recent_all)
        return self.score(memory, pad, owner, item, scenario, dense, base)


# --------------------------------------------------------------------------- files

def save_rankers(out_dir, cfg: RankerConfig, coarse: CoarseRanker, fine: FineRanker | None, item_ids: np.ndarray,
                 item_clicks: np.ndarray, co_clicks: CoClicks | None = None, extra: dict | None = None) -> RankerArtifact:
    """``item_clicks``: [n_scenarios, n_items + 1] the ITEM_PRIOR counts by vocabulary index;
    ``co_clicks``: the CO_CLICK table (None: an empty one)."""
    art = RankerArtifact(out_dir)
    art.root.mkdir(parents=True, exist_ok=True)
    np.save(art.root / RankerArtifact.ITEM_CLICKS, np.asarray(item_clicks, np.int64))
    co = co_clicks or CoClicks.empty(cfg.n_items)
    np.savez(art.root / RankerArtifact.CO_CLICKS, keys=co.keys.astype(np.int64), weights=co.weights.astype(np.float32))
    torch.save(coarse.state_dict(), art.root / RankerArtifact.COARSE)
    if fine is not None:
        torch.save(fine.state_dict(), art.root / RankerArtifact.FINE)
    np.save(art.root / RankerArtifact.ITEM_IDS, np.asarray(item_ids, np.int64))
    (art.root / RankerArtifact.CONFIG).write_text(json.dumps({"ranker": cfg.to_dict(), "fine": fine is not None,
                                                              **(extra or {})}, indent=1))
    return art


@dataclass
class LoadedRankers:
    cfg: RankerConfig
    coarse: CoarseRanker
    fine: FineRanker | None
    item_ids: np.ndarray  # raw ids of the vocabulary (index i + 1)
    item_clicks: np.ndarray  # [n_scenarios, n_items + 1]
    meta: dict  # the whole config.json
    co_clicks: CoClicks


def load_rankers(folder) -> LoadedRankers:
    art = RankerArtifact(folder)
    try:
        meta = json.loads((art.root / RankerArtifact.CONFIG).read_text())
        cfg = RankerConfig(**meta["ranker"])
        item_ids = np.load(art.root / RankerArtifact.ITEM_IDS, allow_pickle=False)
        item_clicks = np.load(art.root / RankerArtifact.ITEM_CLICKS, allow_pickle=False)
        co_clicks = _load_co_clicks(art.root / RankerArtifact.CO_CLICKS, cfg.n_items)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ArtifactError(f"ranker {art.root.name}: unreadable config or vocabulary ({exc})") from exc
    if item_ids.dtype != np.int64 or len(item_ids) != cfg.n_items:
        raise ArtifactError(f"ranker {art.root.name}: {len(item_ids)} item ids, config says {cfg.n_items}")
    if item_clicks.shape != (cfg.n_scenarios, cfg.n_items + 1):
        raise ArtifactError(f"ranker {art.root.name}: item clicks of shape {item_clicks.shape}")
    coarse = load_state_into(CoarseRanker(cfg), art.root / RankerArtifact.COARSE, RankerArtifact.CONFIG)
    fine = (load_state_into(FineRanker(cfg), art.root / RankerArtifact.FINE, RankerArtifact.CONFIG)
            if meta.get("fine") else None)
    return LoadedRankers(cfg, coarse, fine, item_ids, item_clicks, meta, co_clicks)


def _load_co_clicks(path: Path, n_items: int) -> CoClicks:
    """The shipped table; an artifact without one (older) gets an empty table: every CO_CLICK 0."""
    if not path.exists():
        return CoClicks.empty(n_items)
    with np.load(path, allow_pickle=False) as z:
        keys, weights = z["keys"], z["weights"]
    if keys.dtype != np.int64 or weights.shape != keys.shape or (len(keys) and (np.diff(keys) <= 0).any()):
        raise ValueError(f"{path.name}: keys must be unique sorted int64 with one weight each")
    return CoClicks(n_items, keys, weights.astype(np.float32))
