"""Every compared model trained the same way, in one framework.

- ``sass``: stage 1 (pre-training) + stage 2 (fine-tuning).
- ``sass_base``: SASS, stage 2 only (no pre-training).
- ``dssm_m``: one plain two-tower on mixed samples, scenario id as an ordinary feature.
- ``dssm_s``: one plain two-tower per scenario, each trained only on its scenario's clicks.
- ``pop``: per-scenario popularity (train click counts).

All neural models share the embedding size, the input features, the loss and the epoch budget.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from training.data import TrainingData
from training.evaluate import Scorer, model_scorer, per_scenario_scorer, popularity_scorer
from training.model import SASS, ModelConfig
from training.trainer import History, TrainConfig, finetune, pretrain

MODELS = ("sass", "sass_base", "dssm_s", "dssm_m", "pop")


@dataclass
class Fitted:
    name: str
    scorer: Scorer
    model: SASS | None = None  # the exportable model (sass, sass_base, dssm_m)
    history: History = field(default_factory=History)


def model_config(data: TrainingData, ts, kind: str = "sass") -> ModelConfig:
    """ts: settings.training (or anything with embedding_dim, hidden_dims, global_dropout)."""
    return ModelConfig(n_users=len(data.users), n_items=len(data.items), n_scenarios=data.n_scenarios,
                       kind=kind, dim=ts.embedding_dim, hidden_dims=list(ts.hidden_dims),
                       global_dropout=ts.global_dropout)


def fit(name: str, data: TrainingData, ts, cfg: TrainConfig) -> Fitted:
    if name == "pop":
        return Fitted(name, popularity_scorer(data.item_clicks))
    torch.manual_seed(cfg.seed)
    history = History()
    if name in ("sass", "sass_base"):
        model = SASS(model_config(data, ts, "sass"))
        if name == "sass":
            pretrain(model, data, cfg, history)
        finetune(model, data, cfg, history)
        return Fitted(name, model_scorer(model), model, history)
    if name == "dssm_m":
        model = SASS(model_config(data, ts, "two_tower"))
        finetune(model, data, cfg, history)
        return Fitted(name, model_scorer(model), model, history)
    if name == "dssm_s":
        models = []
        for k in range(data.n_scenarios):
            m = SASS(model_config(data, ts, "two_tower"))
            finetune(m, data, cfg, history, train=data.subset_scenario(k))
            models.append(m)
        return Fitted(name, per_scenario_scorer(models), None, history)
    raise ValueError(f"unknown model {name!r}; expected one of {MODELS}")
