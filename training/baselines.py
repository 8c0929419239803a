"""Every compared model trained the same way, in one framework.

- ``sass``: stage 1 (pre-training) + stage 2 (fine-tuning).
- ``sass_base``: SASS, stage 2 only (no pre-training).
- ``dssm_m``: one plain two-tower on mixed samples, scenario id as an ordinary feature.
- ``dssm_s``: one plain two-tower per scenario, each trained only on its scenario's clicks.
- ``pop``: per-scenario popularity (train click counts).

All neural models share the embedding size, the input features, the loss and the epoch budget:
stage 2 runs at most ``finetune_epochs`` epochs and stops early on the validation recall
(``training.trainer``), each model on its own curve (``dssm_s``: each scenario's model on its
scenario's validation recall).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from training.data import TrainingData
from training.evaluate import Scorer, model_scorer, per_scenario_scorer, popularity_scorer, validation_score
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
                       global_dropout=ts.global_dropout, item_popularity=ts.item_popularity_feature)


def build_model(data: TrainingData, ts, kind: str = "sass") -> SASS:
    """A freshly initialised model of ``kind`` for ``data``, its item popularity feature set."""
    model = SASS(model_config(data, ts, kind))
    model.set_item_popularity(data.item_clicks)
    return model


def finetune_on_validation(model: SASS, data: TrainingData, cfg: TrainConfig, history: History,
                           scenario: int | None = None) -> History:
    """Stage 2 with early stopping on the validation recall (of ``scenario`` only, when given);
    without a validation split it runs the whole budget."""
    scenarios = None if scenario is None else [scenario]
    validate = (lambda: validation_score(model, data, scenarios)) if "val" in data.evals else None
    train = None if scenario is None else data.subset_scenario(scenario)
    return finetune(model, data, cfg, history, train=train, validate=validate)


def fit(name: str, data: TrainingData, ts, cfg: TrainConfig) -> Fitted:
    if name == "pop":
        return Fitted(name, popularity_scorer(data.item_clicks))
    torch.manual_seed(cfg.seed)
    history = History()
    if name in ("sass", "sass_base"):
        model = build_model(data, ts, "sass")
        if name == "sass":
            pretrain(model, data, cfg, history)
        finetune_on_validation(model, data, cfg, history)
        return Fitted(name, model_scorer(model), model, history)
    if name == "dssm_m":
        model = build_model(data, ts, "two_tower")
        finetune_on_validation(model, data, cfg, history)
        return Fitted(name, model_scorer(model), model, history)
    if name == "dssm_s":
        models = []
        for k in range(data.n_scenarios):
            m = build_model(data, ts, "two_tower")
            finetune_on_validation(m, data, cfg, history, scenario=k)
            models.append(m)
        return Fitted(name, per_scenario_scorer(models), None, history)
    raise ValueError(f"unknown model {name!r}; expected one of {MODELS}")
