"""SASS: Scenario-Adaptive and Self-Supervised model for multi-scenario recall
(Zhang et al., CIKM 2022, arXiv 2208.11457), plus the plain two-tower it is compared with.

Parts, named as in the paper:

- ``SharedEmbedding``: one embedding layer for every feature, both towers, both stages.
- ``ScenarioAdaptiveGate``: moves information from the global network's layer into the
  scenario network's layer (adaptive gate = how much flows, update gate = how it fuses).
- ``MLSAT``: the multi-layer scenario-adaptive transfer module: the global shared network,
  one network per scenario, a gate between them at every layer.
- ``ScenarioBias``: the scenario-bias (auxiliary) network on scenario-specific features.
- ``Tower``: features -> (scenario vector, global vector); user and item towers are symmetric.
- ``SASS``: the two towers; ``TwoTower`` (kind="two_tower") is the plain DSSM baseline that
  shares the embedding layer and the input features but has one MLP and the scenario id as an
  ordinary feature.
- ``scenario_contrastive_loss`` (stage 1), ``sampled_softmax_loss`` and
  ``distinct_softmax_loss`` (stage 2: the scenario loss and the global auxiliary loss).

Details the paper leaves open, and what this code chooses:

1. Gate equations (the public text describes them only in words): with g_l the global layer,
   s_l the scenario layer and b the scenario-bias vector,
   ``a = sigmoid(W_a [s_l; g_l; b])``, ``t = a * g_l``, ``z = sigmoid(W_z [s_l; t])``,
   ``h_l = z * s_l + (1 - z) * t``. The adaptive gate is one value per sample (how much of
   the global layer flows in, as the paper words it); the update gate is element-wise (one
   value per unit: how to fuse, unit by unit). A per-unit adaptive gate cost a noticeable share
   of a SASS step on CPU; the element-wise update gate keeps the per-unit mixing.
2. Layer inputs: global layer l reads g_{l-1}, scenario layer l reads the gate output h_{l-1};
   layer 0 of both reads the shared input x. Layers are Linear + ReLU (hidden_dims).
3. Global dropout (the later revision's "random dropout of the global input"): during
   training each sample's transferred global vector is zeroed with probability
   ``global_dropout`` (no rescaling: the update gate already normalises the mix), so the
   scenario path must stay useful on its own. The reverse "random operation" of the revision
   is not implemented.
4. Fusion at the top: ``e = W_o [h_L; b]`` (linear), then L2 normalisation; scores are cosine
   similarities divided by a temperature in the losses. The global network's last layer
   gets its own linear head + L2 norm for the auxiliary loss (``Tower.global_vector``),
   applied only to the rows that loss reads; it is not used at serving.
5. Scenario-specific features: the scenario id embedding, plus, on the user side, the user's
   click share in that scenario and whether the user has clicks there at all.
6. Ordinary user features: user id, mean-pooled embeddings of ``recent_clicks`` (this
   scenario) and ``recent_clicks_all``, and the ``scenario_click_share`` vector; item tower:
   item id (the item embedding table is shared with the pooled click histories).
7. Mixed-scenario batches run each scenario's network on its own rows (a loop over at most
   n_scenarios groups); stage-2 batches are single-scenario so it is one group.
8. Stage 1 views: a user's view of scenario k = profile (user id, recent_clicks_all,
   scenario_click_share) + recent_clicks in k + scenario k's features, as of the end of the
   training window. A batch holds whole users (every view of each, ~``pretrain_batch_size``
   views in all, a size chosen on validation recall); each view is encoded once, and all pairs
   of one user's views are positives, with the views of the batch's other users as negatives
   (NT-Xent, as SimCLR, generalised to more than two views). An epoch sees every pair of the
   scenarios each user had impressions in, as the paper asks, with one encoder pass per view
   instead of one per pair member (a user with n views has n(n-1)/2 pairs). Items: the same over
   the scenarios an item was
   shown in. On MovieLens every movie lives in one scenario, so there the item side of stage 1
   has no pairs and only the user side trains.
9. Stage 2 negatives: the other clicks of a single-scenario batch (in-batch softmax), with
   log-q correction by the item's train click frequency in that scenario and accidental hits
   masked. The global auxiliary loss is a softmax of the global vectors over the batch's
   *distinct* items (each once, corrected by the log-probability that the item is in the
   batch at all), estimated on an eighth of the batch's rows as queries (the rows are in
   random order): [B/8, U] logits instead of [B, B] (a batch repeats popular items, so U is
   well below B), which dominate a step. The global network runs once per batch;
   its top layer feeds both the gates and this loss.
10. Out-of-vocabulary ids map to index 0; ``user_id_dropout`` trains that slot (and regularises)
   by replacing a random share of the user ids with 0 during training.
11. Item popularity (``item_popularity``): the item tower's scenario-specific features include the
   item's train clicks in that scenario, log(1 + c) / log(1 + the scenario's largest c), a buffer set
   from the training data (``set_item_popularity``), exported with the weights. Vectors are
   L2-normalised, so no per-item bias can carry the popularity prior; this feature lets the item
   vector point it out, which matters most on a small window where the prior is most of the signal.
12. Gate initialisation: the adaptive gate's bias starts at 2 (a ~ 0.88) and the update gate's at -1
   (z ~ 0.27), so at first the scenario networks mostly pass the global network on. Each scenario
   network sees only its scenario's batches; starting global-led lets a sparse scenario lean on the
   shared network until its own has data, instead of being led by an untrained network.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

KINDS = ("sass", "two_tower")
GATE_INIT_ADAPTIVE = 2.0  # initial bias of the adaptive gate (choice 12)
GATE_INIT_UPDATE = -1.0  # initial bias of the update gate (choice 12)


@dataclass
class ModelConfig:
    n_users: int
    n_items: int
    n_scenarios: int
    kind: str = "sass"
    dim: int = 64
    hidden_dims: list[int] = field(default_factory=lambda: [128, 64])
    bias_dim: int = 16
    global_dropout: float = 0.1
    user_id_dropout: float = 0.05
    item_popularity: bool = False  # choice 11; False keeps artifacts written before it loadable


    def to_dict(self) -> dict:
        return asdict(self)


def mlp(dims: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in zip(dims[:-1], dims[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers)


class SharedEmbedding(nn.Module):
    """One embedding layer for every id feature of both towers."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.user = nn.Embedding(cfg.n_users + 1, cfg.dim)
        self.item = nn.Embedding(cfg.n_items + 1, cfg.dim)
        self.scenario = nn.Embedding(cfg.n_scenarios, cfg.dim)
        for e in (self.user, self.item, self.scenario):
            nn.init.normal_(e.weight, std=0.05)

    def pool(self, seq: torch.Tensor) -> torch.Tensor:
        """Mean of the item embeddings of a click sequence [B, L]; 0 is padding (an empty
        sequence pools to zeros)."""
        return F.embedding_bag(seq, self.item.weight, mode="mean", padding_idx=0)


class ScenarioAdaptiveGate(nn.Module):
    """Transfer from global layer output g to scenario layer output s (choice 1 above)."""

    def __init__(self, width: int, bias_dim: int, global_dropout: float = 0.0):
        super().__init__()
        self.adaptive = nn.Linear(2 * width + bias_dim, 1)  # one value per sample (choice 1)
        self.update = nn.Linear(2 * width, width)
        self.global_dropout = global_dropout
        with torch.no_grad():  # start global-led (choice 12): a ~ 0.88, z ~ 0.27
            self.adaptive.bias.fill_(GATE_INIT_ADAPTIVE)
            self.update.bias.fill_(GATE_INIT_UPDATE)

    def forward(self, s: torch.Tensor, g: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        a = torch.sigmoid(self.adaptive(torch.cat([s, g, b], -1)))  # how much global info flows
        if self.training and self.global_dropout > 0:  # drop on the [B, 1] gate: one small op
            a = a * (torch.rand_like(a) >= self.global_dropout)
        t = a * g
        z = torch.sigmoid(self.update(torch.cat([s, t], -1)))  # how it fuses with the scenario's own
        return torch.lerp(t, s, z)  # z * s + (1 - z) * t in one op


class MLSAT(nn.Module):
    """Global shared network + per-scenario networks + stacked scenario-adaptive gates."""

    def __init__(self, in_dim: int, hidden_dims: list[int], n_scenarios: int, bias_dim: int,
                 global_dropout: float):
        super().__init__()
        dims = [in_dim] + list(hidden_dims)
        self.global_layers = nn.ModuleList(mlp(dims[l:l + 2]) for l in range(len(hidden_dims)))
        self.scenario_layers = nn.ModuleList(
            nn.ModuleList(mlp(dims[l:l + 2]) for l in range(len(hidden_dims))) for _ in range(n_scenarios))
        self.gates = nn.ModuleList(
            nn.ModuleList(ScenarioAdaptiveGate(w, bias_dim, global_dropout) for w in hidden_dims)
            for _ in range(n_scenarios))

    def _global(self, x: torch.Tensor) -> list[torch.Tensor]:
        gs = []
        for layer in self.global_layers:
            x = layer(x)
            gs.append(x)
        return gs

    def _scenario(self, k: int, x: torch.Tensor, gs: list[torch.Tensor], b: torch.Tensor) -> torch.Tensor:
        h = x
        for layer, gate, g in zip(self.scenario_layers[k], self.gates[k], gs):
            h = gate(layer(h), g, b)
        return h

    def forward(self, x: torch.Tensor, scenario: torch.Tensor, b: torch.Tensor):
        """-> (scenario network's top layer h_L, global network's top layer g_L), rows as given."""
        ks, counts = torch.unique(scenario, return_counts=True)
        if len(ks) == 1:  # the single-scenario batch (every stage-2 step): no regrouping at all
            gs = self._global(x)
            return self._scenario(int(ks[0]), x, gs, b), gs[-1]
        # group the rows by scenario once: contiguous slices, not gathers per scenario
        order = torch.argsort(scenario, stable=True)
        x, b = x[order], b[order]
        gs = self._global(x)
        sizes = counts.tolist()
        xs, bs, parts = x.split(sizes), b.split(sizes), [g.split(sizes) for g in gs]
        hs = [self._scenario(k, xs[j], [p[j] for p in parts], bs[j]) for j, k in enumerate(ks.tolist())]
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(len(order), device=order.device)
        return torch.cat(hs)[inverse], gs[-1][inverse]


class ScenarioBias(nn.Module):
    """The scenario-bias network over scenario-specific features."""

    def __init__(self, in_dim: int, bias_dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, bias_dim), nn.ReLU())

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.net(f)


class Tower(nn.Module):
    """Input vector + scenario features -> (L2-normalised scenario vector, global vector)."""

    def __init__(self, cfg: ModelConfig, in_dim: int, scen_dim: int):
        super().__init__()
        self.kind = cfg.kind
        top = cfg.hidden_dims[-1]
        if cfg.kind == "sass":
            self.bias = ScenarioBias(scen_dim, cfg.bias_dim)
            self.mlsat = MLSAT(in_dim, cfg.hidden_dims, cfg.n_scenarios, cfg.bias_dim, cfg.global_dropout)
            self.out = nn.Linear(top + cfg.bias_dim, cfg.dim)
            self.global_head = nn.Linear(top, cfg.dim)
        elif cfg.kind == "two_tower":
            self.net = mlp([in_dim + scen_dim] + list(cfg.hidden_dims))
            self.out = nn.Linear(top, cfg.dim)
        else:
            raise ValueError(f"unknown model kind {cfg.kind!r}; expected one of {KINDS}")

    def forward(self, x, scen_feats, scenario):
        """-> (scenario vector, global network's top layer or None); ``global_vector`` turns
        the latter into the auxiliary loss's vectors, only for the rows that loss uses."""
        if self.kind == "two_tower":
            return F.normalize(self.out(self.net(torch.cat([x, scen_feats], -1))), dim=-1), None
        b = self.bias(scen_feats)
        h, g = self.mlsat(x, scenario, b)
        return F.normalize(self.out(torch.cat([h, b], -1)), dim=-1), g

    def global_vector(self, g: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.global_head(g), dim=-1)


class SASS(nn.Module):
    """Symmetric user and item towers over one shared embedding layer; each item has one
    vector per scenario. ``kind="two_tower"`` gives the plain DSSM in the same framework."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        S, d = cfg.n_scenarios, cfg.dim
        self.emb = SharedEmbedding(cfg)
        self.user_tower = Tower(cfg, in_dim=3 * d + S, scen_dim=d + 2)
        self.item_tower = Tower(cfg, in_dim=d, scen_dim=d + int(cfg.item_popularity))
        if cfg.item_popularity:  # choice 11: [S, n_items + 1], set from the train clicks
            self.register_buffer("item_popularity", torch.zeros(S, cfg.n_items + 1))

    @torch.no_grad()
    def set_item_popularity(self, item_clicks) -> None:
        """The item tower's popularity feature from train click counts ``[S, n_items + 1]``:
        log(1 + clicks) / log(1 + the scenario's most clicks), in [0, 1]."""
        if self.cfg.item_popularity:
            c = torch.log1p(torch.as_tensor(item_clicks, dtype=torch.float32))
            self.item_popularity.copy_(c / c.amax(1, keepdim=True).clamp_min(1.0))

    def encode_user(self, f: dict[str, torch.Tensor]):
        """f: user (idx) [B], scenario [B], recent_clicks [B,L], recent_clicks_all [B,L],
        scenario_click_share [B,S] -> (scenario vector [B,d], global network's top layer or None:
        ``user_tower.global_vector`` of it gives the auxiliary loss's global vectors)."""
        user, scen = f["user"], f["scenario"]
        if self.training and self.cfg.user_id_dropout > 0:
            user = user.masked_fill(torch.rand(user.shape, device=user.device) < self.cfg.user_id_dropout, 0)
        share = f["scenario_click_share"]
        x = torch.cat([self.emb.user(user), self.emb.pool(f["recent_clicks"]),
                       self.emb.pool(f["recent_clicks_all"]), share], -1)
        own = share.gather(1, scen[:, None])
        scen_feats = torch.cat([self.emb.scenario(scen), own, (own > 0).float()], -1)
        return self.user_tower(x, scen_feats, scen)

    def encode_item(self, item: torch.Tensor, scen: torch.Tensor):
        scen_feats = self.emb.scenario(scen)
        if self.cfg.item_popularity:
            scen_feats = torch.cat([scen_feats, self.item_popularity[scen, item][:, None]], -1)
        return self.item_tower(self.emb.item(item), scen_feats, scen)


# --------------------------------------------------------------------------- losses

def scenario_contrastive_loss(z: torch.Tensor, ids: torch.Tensor, temperature: float) -> torch.Tensor:
    """Stage 1 InfoNCE over views: ``z`` [V, d] holds views of entities (``ids`` [V]), each in
    one scenario. Every ordered pair (a, b) of two views of one entity is a positive; its
    negatives are the views of every other entity in the batch (the entity's remaining views
    are neither). Each view is encoded once, however many pairs it is in: with a denominator
    per pair of ``exp(s_ab) + sum_n exp(s_an)`` the loss of pair (a, b) is
    ``logaddexp(s_ab, lse_a) - s_ab`` with ``lse_a`` one masked logsumexp per row."""
    logits = z @ z.T / temperature
    same = ids[:, None] == ids[None, :]
    lse = torch.logsumexp(logits.masked_fill(same, float("-inf")), dim=1)  # -inf: no negatives
    pairs = same.clone()  # masked_fill keeps ``same`` for its backward: not in place
    pairs.fill_diagonal_(False)
    a, b = pairs.nonzero(as_tuple=True)
    if len(a) == 0:
        return logits.sum() * 0.0  # no entity with two views in this batch
    pos = logits[a, b]
    return (torch.logaddexp(pos, lse[a]) - pos).mean()


def sampled_softmax_loss(u: torch.Tensor, v: torch.Tensor, items: torch.Tensor, temperature: float,
                         log_q: torch.Tensor | None = None) -> torch.Tensor:
    """Stage 2: in-batch softmax over the batch's clicked items with log-q correction
    (Yi et al. 2019: subtract log of each item's sampling probability) and accidental hits
    (the same item clicked by another row) masked out. ``u`` may hold only the first m rows
    of the batch (an unbiased, cheaper estimate): row i's positive is ``v[i]``."""
    m = len(u)
    logits = u @ v.T / temperature
    if log_q is not None:
        logits = logits - log_q[None, :]
    rows = torch.arange(m, device=u.device)
    dup = items[:m, None] == items[None, :]
    dup[rows, rows] = False
    logits = logits.masked_fill(dup, float("-inf"))
    return F.cross_entropy(logits, rows)


def distinct_softmax_loss(u: torch.Tensor, v: torch.Tensor, pos: torch.Tensor, temperature: float,
                          log_p: torch.Tensor | None = None) -> torch.Tensor:
    """Stage 2's auxiliary loss: softmax over the batch's *distinct* items ``v`` [U, d]; row i's
    positive is ``v[pos[i]]``. Each item is a column once, so nothing needs masking, and the
    logits are [m, U] instead of [m, B]. ``log_p``: log of each item's probability of being in
    the batch at all, ``log(1 - (1 - q)^B)`` (the correction for sampling without duplicates,
    as TensorFlow's samplers with ``unique=True`` use; ~``log(B q)`` for rare items)."""
    logits = u @ v.T / temperature
    if log_p is not None:
        logits = logits - log_p[None, :]
    return F.cross_entropy(logits, pos)
