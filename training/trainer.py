"""The two training stages as plain loops over pre-computed feature arrays.

- ``pretrain``: stage 1, scenario-contrastive pre-training on unlabeled data (a user's
  views in two visited scenarios are positives, the batch's other users negatives; the same
  for items that appear in two scenarios). Batches hold whole users (all their views), so
  each view is encoded once per epoch.
- ``finetune``: stage 2, clicks only: per-scenario in-batch softmax with log-q correction on
  the scenario vectors + ``global_loss_weight`` x a softmax of the global network's vectors
  over the batch's distinct items (model.py, choice 9). Batches hold one scenario each
  (negatives come from that scenario's candidates, encoded as that scenario's vectors);
  batches of all scenarios are interleaved, so all scenarios train jointly.

Early stopping: ``finetune`` takes an optional ``validate()`` (the validation recall of the model as
it is now; ``training.baselines`` builds it from the evaluation code). It is called after every
epoch; training stops once ``patience`` epochs in a row did not improve on the best score, and the
best epoch's weights are restored, so ``finetune_epochs`` is a ceiling and the validation split
chooses the budget. Stage 1 has no early stopping (its loss is not the recall it serves): it runs
``pretrain_epochs``, or more on a small window so that it takes ``min_pretrain_steps`` steps
(``stage1_epochs``).

Data parallel: when ``torch.distributed`` is initialised (``torchrun``, gloo), every rank
walks the same batch order, takes its slice of each batch, and gradients are averaged with
an all-reduce before each step, so every rank holds identical weights throughout.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field

import logging

import numpy as np
import torch
import torch.distributed as dist

from sassflow.contracts.features import MODEL_USER_INPUTS
from training.data import TrainingData
from training.model import SASS, distinct_softmax_loss, sampled_softmax_loss, scenario_contrastive_loss

log = logging.getLogger("sassflow.training")
AUX_ROWS_DIVISOR = 8  # the global auxiliary loss uses an eighth of the batch's rows as queries
# the user tower's inputs (sassflow.contracts.features), with the user id as its vocabulary index "user"
USER_KEYS = tuple("user" if name == "user_id" else name for name in MODEL_USER_INPUTS)


@dataclass
class TrainConfig:
    """The optimisation knobs of one run; defaults live in ``settings.training`` only."""

    pretrain_epochs: int
    finetune_epochs: int
    batch_size: int
    pretrain_batch_size: int
    learning_rate: float
    temperature: float
    global_loss_weight: float
    seed: int
    log_q: bool = True
    progress: bool = True
    min_steps_per_epoch: int = 0  # stage 2: smaller batches on small data (``stage2_batch_size``)
    min_pretrain_steps: int = 0  # stage 1: more epochs on small data (``stage1_epochs``)
    patience: int = 0  # stage 2 stops after this many epochs without a better validation score; 0: never


    @classmethod
    def from_settings(cls, ts, **over) -> "TrainConfig":
        kw = {k: getattr(ts, k) for k in ("pretrain_epochs", "finetune_epochs", "batch_size", "pretrain_batch_size",
                                          "learning_rate", "temperature", "global_loss_weight", "seed")}
        kw["log_q"] = ts.log_q_correction
        kw["patience"] = ts.early_stopping_patience
        kw["min_steps_per_epoch"] = ts.min_steps_per_epoch
        kw["min_pretrain_steps"] = ts.min_pretrain_steps
        kw.update(over)
        return cls(**kw)


@dataclass
class History:
    """Loss curves (one point per optimisation step) and wall time per stage."""

    losses: dict[str, list[float]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    cpu_seconds: dict[str, float] = field(default_factory=dict)  # this process's CPU time: robust to a busy box
    samples: dict[str, int] = field(default_factory=dict)
    epochs: dict[str, int] = field(default_factory=dict)  # epochs run (early stopping may cut them)
    best_epoch: dict[str, int] = field(default_factory=dict)  # 1-based epoch whose weights were kept
    val_curve: dict[str, list[float]] = field(default_factory=dict)  # validation score after each epoch


def to_torch(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}


def take(t: dict[str, torch.Tensor], idx: torch.Tensor, keys=USER_KEYS) -> dict[str, torch.Tensor]:
    return {k: t[k][idx] for k in keys}


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _broadcast_weights(model: torch.nn.Module) -> None:
    if _world()[1] > 1:
        for p in model.state_dict().values():
            dist.broadcast(p, 0)


def _average_grads(model: torch.nn.Module) -> None:
    _, world = _world()
    if world == 1:
        return
    for p in model.parameters():
        if p.grad is None:  # a scenario network this batch did not touch: all ranks agree it is 0
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad)
        p.grad /= world


def _progress(n: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=n, desc=desc, file=sys.stderr, disable=not enabled or _world()[0] != 0,
                leave=False, mininterval=1.0)


class EarlyStopping:
    """Keeps the best weights seen so far by a validation score; ``update`` says when to stop."""

    def __init__(self, model: torch.nn.Module, patience: int):
        self.model, self.patience = model, patience
        self.best, self.best_epoch, self.state = float("-inf"), 0, None

    def update(self, epoch: int, score: float) -> bool:
        """Record the score after ``epoch`` (1-based); True when training should stop."""
        if score > self.best:
            self.best, self.best_epoch = score, epoch
            self.state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        return epoch - self.best_epoch >= self.patience

    def restore(self) -> None:
        if self.state is not None:
            self.model.load_state_dict(self.state)


def _run(model, batches, step_fn, cfg: TrainConfig, history: History, stage: str, epochs: int,
         validate=None) -> None:
    """Shared optimisation loop: ``batches(epoch, rng)`` yields index arrays, ``step_fn(idx)``
    returns the loss of one (rank-local) batch; ``validate()`` (optional): early stopping."""
    import time

    rank, world = _world()
    rng = np.random.default_rng(cfg.seed + (1 if stage == "pretrain" else 2))
    _broadcast_weights(model)
    # fused: one kernel for all parameters instead of several ops per tensor
    opt = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate, fused=True)
    stopper = EarlyStopping(model, cfg.patience) if validate is not None and cfg.patience > 0 else None
    losses = history.losses.setdefault(stage, [])
    t0, c0, n, epoch = time.perf_counter(), time.process_time(), 0, 0
    for epoch in range(1, epochs + 1):
        model.train()
        first = len(losses)
        n += _epoch(model, opt, list(batches(rng)), step_fn, losses, cfg,
                    f"{stage} {epoch}/{epochs}", rank, world)
        score = None
        if stopper is not None:
            model.eval()  # every rank holds the same weights: they score alike and stop together
            score = float(validate())
            history.val_curve.setdefault(stage, []).append(score)
        if rank == 0:  # one line per epoch at info: what a task log shows instead of a progress bar
            log.info("%s epoch %d/%d: mean loss %.4f%s", stage, epoch, epochs, float(np.mean(losses[first:] or [0.0])),
                     "" if score is None else f", validation recall@50 {score:.4f}")
        if stopper is not None and stopper.update(epoch, score):
            break
    if stopper is not None:
        stopper.restore()
        history.best_epoch[stage] = stopper.best_epoch
    model.eval()
    history.epochs[stage] = history.epochs.get(stage, 0) + epoch
    history.seconds[stage] = history.seconds.get(stage, 0.0) + time.perf_counter() - t0
    history.cpu_seconds[stage] = history.cpu_seconds.get(stage, 0.0) + time.process_time() - c0
    history.samples[stage] = history.samples.get(stage, 0) + n


def _epoch(model, opt, plan, step_fn, losses: list[float], cfg: TrainConfig, desc: str, rank: int,
           world: int) -> int:
    """One pass over ``plan`` (index arrays); returns the samples seen."""
    n = 0
    with _progress(len(plan), desc, cfg.progress) as bar:
        for idx in plan:
            local = idx[rank::world]
            loss = step_fn(torch.from_numpy(local))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            _average_grads(model)
            opt.step()
            losses.append(loss.item())
            n += len(idx)
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
    return n


def scenario_batches(scenario: np.ndarray, batch_size: int, rng: np.random.Generator):
    """Single-scenario batches of every row, in a random interleaved order (``scenario``: any
    group label per row; batches never mix groups)."""
    chunks = []
    for k in np.unique(scenario):
        rows = rng.permutation(np.flatnonzero(scenario == k))
        chunks += [rows[i:i + batch_size] for i in range(0, len(rows), batch_size)]
    for j in rng.permutation(len(chunks)):
        if len(chunks[j]) > 1:
            yield chunks[j]


def _multi_view_entities(entity: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The view rows of every entity with at least two views: (order, starts, sizes), entity j's
    rows being ``order[starts[j]:starts[j] + sizes[j]]``."""
    order = np.argsort(entity, kind="stable")
    e = entity[order]
    starts = np.flatnonzero(np.r_[True, e[1:] != e[:-1]])
    sizes = np.diff(np.r_[starts, len(e)])
    keep = sizes > 1
    return order, starts[keep], sizes[keep]


def _rows_of(order: np.ndarray, starts: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """The concatenated view rows of the given entities (vectorised ranges)."""
    offsets = np.arange(sizes.sum()) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    return order[np.repeat(starts, sizes) + offsets]


def pretrain(model: SASS, data: TrainingData, cfg: TrainConfig, history: History | None = None) -> History:
    """Stage 1: scenario-contrastive pre-training (InfoNCE with temperature) on whole-entity
    batches: every view of a batch's users (or items) is encoded once (model.py, choice 8)."""
    history = history or History()
    views = to_torch(data.views)
    user_ids = views["user"]
    items = torch.from_numpy(data.item_views[:, 0])
    item_scen = torch.from_numpy(data.item_views[:, 1])
    users = _multi_view_entities(data.views["user"])
    item_ents = _multi_view_entities(data.item_views[:, 0])
    n_u, n_i = len(users[1]), len(item_ents[1])
    if n_u + n_i == 0:
        return history
    # one index space of entities: [0, n_u) users, [n_u, n_u + n_i) items; batches never mix
    # them, and data-parallel ranks split a batch by entity, so no pair is cut in two
    group = np.r_[np.zeros(n_u, np.int64), np.ones(n_i, np.int64)]
    mean_views = (users[2].sum() + item_ents[2].sum()) / (n_u + n_i)
    per_batch = max(2, int(round(cfg.pretrain_batch_size / mean_views)))  # ~pretrain_batch_size views a step

    def encode_users(rows):
        return model.encode_user(take(views, rows))[0], user_ids[rows]

    def encode_items(rows):
        return model.encode_item(items[rows], item_scen[rows])[0], items[rows]

    def step(idx):
        idx = idx.numpy()
        (order, starts, sizes), encode, first = (
            (users, encode_users, 0) if len(idx) == 0 or idx[0] < n_u else (item_ents, encode_items, n_u))
        z, ids = encode(torch.from_numpy(_rows_of(order, starts[idx - first], sizes[idx - first])))
        return scenario_contrastive_loss(z, ids, cfg.temperature)

    steps = -(-n_u // per_batch) + -(-n_i // per_batch)  # batches of one epoch (ceil per group)
    _run(model, lambda rng: scenario_batches(group, per_batch, rng), step, cfg, history, "pretrain",
         stage1_epochs(steps, cfg))
    return history


def stage1_epochs(steps_per_epoch: int, cfg: TrainConfig) -> int:
    """``cfg.pretrain_epochs``, or more so that stage 1 takes at least ``min_pretrain_steps`` steps: an
    epoch has a step per ~``pretrain_batch_size`` views, so on a small window (few users) a fixed epoch
    count leaves the contrastive task a handful of updates and the networks barely leave their start."""
    if steps_per_epoch <= 0:
        return cfg.pretrain_epochs
    return max(cfg.pretrain_epochs, -(-cfg.min_pretrain_steps // steps_per_epoch))


def finetune(model: SASS, data: TrainingData, cfg: TrainConfig, history: History | None = None,
             train: dict[str, np.ndarray] | None = None, validate=None) -> History:
    """Stage 2: per-scenario two-tower loss on clicks + the global auxiliary loss; with
    ``validate`` (and ``cfg.patience`` > 0), early stopping on its score (module docstring)."""
    history = history or History()
    t = to_torch(train if train is not None else data.train)
    step = finetune_step(model, data, t, cfg)
    batch_size = stage2_batch_size(len(t["item"]), cfg)
    _run(model, lambda rng: scenario_batches(t["scenario"].numpy(), batch_size, rng), step, cfg,
         history, "finetune", cfg.finetune_epochs, validate)
    return history


MIN_BATCH = 64  # in-batch negatives: fewer than this and the softmax has too little to contrast


def stage2_batch_size(n_clicks: int, cfg: TrainConfig) -> int:
    """``cfg.batch_size``, or smaller so that an epoch has at least ``min_steps_per_epoch`` steps:
    on a small window a large batch leaves too few updates to get past the popularity prior."""
    if cfg.min_steps_per_epoch <= 0:
        return cfg.batch_size
    return int(min(cfg.batch_size, max(MIN_BATCH, n_clicks // cfg.min_steps_per_epoch)))


def finetune_step(model: SASS, data: TrainingData, t: dict[str, torch.Tensor], cfg: TrainConfig):
    """The stage-2 loss of one batch (``step(idx) -> loss``) over the click rows ``t``."""
    counts = data.item_clicks.astype(np.float64) + 1.0  # +1: never log(0) for a fresh item
    q = counts / counts.sum(1, keepdims=True)  # [S, items]: click share within the scenario
    log_q, log1m_q = torch.from_numpy(np.log(q)).float(), torch.from_numpy(np.log1p(-q))
    n_keys = data.item_clicks.shape[1]

    def step(idx):
        f = take(t, idx)
        items, scen = t["item"][idx], f["scenario"]
        u, ug = model.encode_user(f)
        # a batch repeats popular items: encode each (scenario, item) once, then gather
        keys, inv = torch.unique(scen * n_keys + items, return_inverse=True)
        k_scen, k_item = keys // n_keys, keys % n_keys
        v, vg = model.encode_item(k_item, k_scen)
        lq = log_q[scen, items] if cfg.log_q else None
        loss = sampled_softmax_loss(u, v[inv], items, cfg.temperature, lq)
        if ug is not None and cfg.global_loss_weight > 0:
            m = max(2, len(idx) // AUX_ROWS_DIVISOR)
            # log P(item in a batch of len(idx) draws) = log(1 - (1 - q)^B), in float64
            lp = torch.log(-torch.expm1(len(idx) * log1m_q[k_scen, k_item])).float() if cfg.log_q else None
            aux = distinct_softmax_loss(model.user_tower.global_vector(ug[:m]), model.item_tower.global_vector(vg),
                                        inv[:m], cfg.temperature, lp)
            loss = loss + cfg.global_loss_weight * aux
        return loss

    return step
