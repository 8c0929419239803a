"""The two training stages as plain loops over pre-computed feature arrays.

- ``pretrain``: stage 1, scenario-contrastive pre-training on unlabeled data (a user's
  views in two visited scenarios are positives, the batch's other users negatives; the same
  for items that appear in two scenarios).
- ``finetune``: stage 2, clicks only: per-scenario in-batch softmax with log-q correction on
  the scenario vectors + ``global_loss_weight`` x the same loss on the global network's
  vectors. Batches hold one scenario each (negatives come from that scenario's candidates,
  encoded as that scenario's vectors); batches of all scenarios are interleaved, so all
  scenarios train jointly.

Data parallel: when ``torch.distributed`` is initialised (``torchrun``, gloo), every rank
walks the same batch order, takes its slice of each batch, and gradients are averaged with
an all-reduce before each step, so every rank holds identical weights throughout.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist

from training.data import TrainingData
from training.model import SASS, scenario_contrastive_loss, sampled_softmax_loss

AUX_ROWS_DIVISOR = 8  # the global auxiliary loss uses an eighth of the batch's rows as queries
USER_KEYS = ("user", "scenario", "recent_clicks", "recent_clicks_all", "scenario_click_share")


@dataclass
class TrainConfig:
    """The optimisation knobs of one run; defaults live in ``settings.training`` only."""

    pretrain_epochs: int
    finetune_epochs: int
    batch_size: int
    learning_rate: float
    temperature: float
    global_loss_weight: float
    seed: int
    log_q: bool = True
    progress: bool = True

    @classmethod
    def from_settings(cls, ts, **over) -> "TrainConfig":
        kw = {k: getattr(ts, k) for k in ("pretrain_epochs", "finetune_epochs", "batch_size",
                                          "learning_rate", "temperature", "global_loss_weight", "seed")}
        kw["log_q"] = ts.log_q_correction
        kw.update(over)
        return cls(**kw)


@dataclass
class History:
    """Loss curves (one point per optimisation step) and wall time per stage."""

    losses: dict[str, list[float]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    cpu_seconds: dict[str, float] = field(default_factory=dict)  # this process's CPU time: robust to a busy box
    samples: dict[str, int] = field(default_factory=dict)


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


def _run(model, batches, step_fn, cfg: TrainConfig, history: History, stage: str, epochs: int) -> None:
    """Shared optimisation loop: ``batches(epoch, rng)`` yields index arrays, ``step_fn(idx)``
    returns the loss of one (rank-local) batch."""
    import time

    rank, world = _world()
    rng = np.random.default_rng(cfg.seed + (1 if stage == "pretrain" else 2))
    _broadcast_weights(model)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate)
    model.train()
    losses = history.losses.setdefault(stage, [])
    t0, c0, n = time.perf_counter(), time.process_time(), 0
    for epoch in range(epochs):
        plan = list(batches(rng))
        with _progress(len(plan), f"{stage} {epoch + 1}/{epochs}", cfg.progress) as bar:
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
    model.eval()
    history.seconds[stage] = history.seconds.get(stage, 0.0) + time.perf_counter() - t0
    history.cpu_seconds[stage] = history.cpu_seconds.get(stage, 0.0) + time.process_time() - c0
    history.samples[stage] = history.samples.get(stage, 0) + n


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


def _cross_scenario_pairs(entity: np.ndarray) -> np.ndarray:
    """Row pairs (i, j), i < j, of the same entity in two different scenarios."""
    order = np.argsort(entity, kind="stable")
    e = entity[order]
    starts = np.flatnonzero(np.r_[True, e[1:] != e[:-1]])
    sizes = np.diff(np.r_[starts, len(e)])
    pairs = [np.stack(np.triu_indices(n, 1), 1) + s for s, n in zip(starts, sizes) if n > 1]
    if not pairs:
        return np.zeros((0, 2), np.int64)
    return order[np.concatenate(pairs)]


def pretrain(model: SASS, data: TrainingData, cfg: TrainConfig, history: History | None = None) -> History:
    """Stage 1: scenario-contrastive pre-training (InfoNCE with temperature)."""
    history = history or History()
    views = to_torch(data.views)
    user_pairs = _cross_scenario_pairs(data.views["user"])
    item_views = data.item_views
    item_pairs = _cross_scenario_pairs(item_views[:, 0])
    items = torch.from_numpy(item_views[:, 0])
    item_scen = torch.from_numpy(item_views[:, 1])
    n_u, n_i = len(user_pairs), len(item_pairs)
    if n_u + n_i == 0:
        return history
    # one index space: [0, n_u) user pairs, [n_u, n_u + n_i) item pairs; batches never mix them
    group = np.r_[np.zeros(n_u, np.int64), np.ones(n_i, np.int64)]
    up, ip = torch.from_numpy(user_pairs), torch.from_numpy(item_pairs)

    def step(idx):
        if len(idx) == 0 or idx[0] < n_u:
            a, b = up[idx, 0], up[idx, 1]
            # both views in one pass: each scenario's network runs once per step, not twice
            za, zb = model.encode_user(take(views, torch.cat([a, b])))[0].split(len(a))
            return scenario_contrastive_loss(za, zb, cfg.temperature, views["user"][a])
        idx = idx - n_u
        a, b = ip[idx, 0], ip[idx, 1]
        ab = torch.cat([a, b])
        za, zb = model.encode_item(items[ab], item_scen[ab])[0].split(len(a))
        return scenario_contrastive_loss(za, zb, cfg.temperature, items[a])

    _run(model, lambda rng: scenario_batches(group, cfg.batch_size, rng), step, cfg, history, "pretrain",
         cfg.pretrain_epochs)
    return history


def finetune(model: SASS, data: TrainingData, cfg: TrainConfig, history: History | None = None,
             train: dict[str, np.ndarray] | None = None) -> History:
    """Stage 2: per-scenario two-tower loss on clicks + the global auxiliary loss."""
    history = history or History()
    t = to_torch(train if train is not None else data.train)
    counts = data.item_clicks.astype(np.float64) + 1.0  # +1: never log(0) for a fresh item
    log_q = torch.from_numpy(np.log(counts / counts.sum(1, keepdims=True))).float()

    n_keys = data.item_clicks.shape[1]

    def step(idx):
        f = take(t, idx)
        items, scen = t["item"][idx], f["scenario"]
        u, ug = model.encode_user(f)
        # a batch repeats popular items: encode each (scenario, item) once, then gather
        keys, inv = torch.unique(scen * n_keys + items, return_inverse=True)
        v, vg = model.encode_item(keys % n_keys, keys // n_keys)
        v, vg = v[inv], (vg[inv] if vg is not None else None)
        lq = log_q[scen, items] if cfg.log_q else None
        loss = sampled_softmax_loss(u, v, items, cfg.temperature, lq)
        if ug is not None and cfg.global_loss_weight > 0:
            m = max(2, len(idx) // AUX_ROWS_DIVISOR)
            loss = loss + cfg.global_loss_weight * sampled_softmax_loss(ug[:m], vg, items, cfg.temperature, lq)
        return loss

    _run(model, lambda rng: scenario_batches(t["scenario"].numpy(), cfg.batch_size, rng), step, cfg,
         history, "finetune", cfg.finetune_epochs)
    return history
