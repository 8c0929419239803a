"""Training, evaluating and gating the rankers on ranking lists (``training.ranking_data``).

- ``fit_coarse``: the coarse MLP on the training rows; the epoch with the best validation NDCG@10 is kept;
- ``fit_fine``: the fine transformer ranker, on the same rows (``p.loss``), batches of whole requests (each
  request's click sequences are encoded once); the epoch with the best validation NDCG@10 is kept;
- ``fit_lambdarank``: the LightGBM LambdaRank baseline on the same rows and dense features (+ the
  scenario as a categorical feature), early-stopped on the same validation lists;
- ``cascade``: what serving runs: coarse over every candidate, fine over the coarse top ``keep``,
  the fine order first, the rest after in coarse order;
- ``ranking_metrics``: NDCG@K and recall@K of each request's final list (recall = hits / the
  request's clicks, found by recall or not) and AUC on the split's impressions among the candidates,
  per scenario id and the macro mean;
- ``train_rankers``: all of it for one prepared data set + recall model; the gate keeps the rankers
  only if the cascade beats the recall order on the validation lists.

Validation lists: the validation split's requests of a held-out share of the users (``holdout``),
never trained on; test lists: the test split's requests (BENCHMARKS.md's ranking protocol).
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from training.rankers import CoarseRanker, FineRanker, RankerConfig, dense_matrix
from training.ranking_data import EventArrays, PointInTime, RankingLists, build_lists, event_arrays, train_co_clicks
from training.trainer import EarlyStopping

K = 10  # the ranking metrics' cut-off: the final list a user sees


@dataclass
class RankingParams:
    """The knobs of one ranker training: ``settings.ranking``'s fields (where the defaults live and say
    why), plus the seed and whether to show progress bars."""

    candidates: int
    coarse_keep: int
    exposure_negatives: int
    holdout: float
    coarse_epochs: int
    fine_epochs: int
    batch_lists: int
    learning_rate: float
    dim: int
    min_gain: float
    loss: str
    residual: bool = True
    fine_learning_rate: float | None = None  # None: ``learning_rate``
    scenario_balance: bool = False
    dropout: float = 0.1  # the fine ranker's
    recall_weight: float = 10.0  # the recall model's inverse temperature (``settings.training.temperature``)
    seed: int = 0
    progress: bool = False

    @classmethod
    def from_settings(cls, rs=None, ts=None, **over) -> "RankingParams":
        """From ``settings.ranking`` (default: the defaults) and ``settings.training`` (the recall
        model's temperature gives ``recall_weight``), ``over`` replacing any field."""
        from sassflow.settings import RankingSettings

        rs = rs or RankingSettings()
        kw = {k: getattr(rs, k) for k in cls.__dataclass_fields__ if hasattr(rs, k)}
        if ts is not None:
            kw["recall_weight"] = 1.0 / ts.temperature
        return cls(**{**kw, **over})


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def dense_of(lists: RankingLists, branches: list[str]) -> np.ndarray:
    return dense_matrix(lists.row_columns(), lists.branch, branches, lists.user_cols, lists.owner)


def _list_starts(owner: np.ndarray, n_lists: int) -> np.ndarray:
    """Rows are grouped by owner (``RankingLists.take_lists``): list j's rows are starts[j]:starts[j+1]."""
    return np.searchsorted(owner, np.arange(n_lists + 1))


def ranked_rows(lists: RankingLists, scores: np.ndarray) -> np.ndarray:
    """[n_lists, longest list] each list's rows, best score first (ties and NaN: in row order, NaN last),
    -1 after a list's end.  One stable sort per list of a padded grid: millions of rows sort in a
    fraction of a global (owner, score) sort's time."""
    starts = _list_starts(lists.owner, lists.n_lists)
    slot = np.arange(len(lists.owner)) - starts[lists.owner]
    width = int(np.diff(starts).max()) if lists.n_lists else 0
    grid = np.full((lists.n_lists, width), np.nan)  # padding sorts last, after every score
    grid[lists.owner, slot] = -np.asarray(scores, np.float64)
    rows = np.full((lists.n_lists, width), -1, np.int64)
    rows[lists.owner, slot] = np.arange(len(lists.owner))
    return np.take_along_axis(rows, np.argsort(grid, axis=1, kind="stable"), 1)


# --------------------------------------------------------------------------- training

def _loss(kind: str, logits: torch.Tensor, labels: torch.Tensor, owner: np.ndarray,
          weight: torch.Tensor | None = None) -> torch.Tensor:
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(logits, labels, weight)
    if kind == "lambdarank":
        return lambdarank_loss(logits, labels, torch.from_numpy(owner), weight)
    return listwise_softmax_loss(logits, labels, torch.from_numpy(owner), weight)


def lambdarank_loss(logits: torch.Tensor, labels: torch.Tensor, owner: torch.Tensor, weight: torch.Tensor | None = None,
                    sigma: float = 1.0) -> torch.Tensor:
    """LambdaRank: a logistic loss on every (clicked, not clicked) pair of rows of a request, weighted by
    how much the request's NDCG would change were the two swapped in the current order (labels are 0/1;
    a request's rows are contiguous).  The mean over the requests with a click; ``weight``: one per row,
    the same for every row of a request, weighs the requests instead."""
    _, inv, counts = torch.unique_consecutive(owner, return_inverse=True, return_counts=True)
    G, L = len(counts), int(counts.max())
    starts = torch.cumsum(counts, 0) - counts
    at = (inv, torch.arange(len(owner)) - starts[inv])
    s = torch.full((G, L), -torch.inf).index_put(at, logits)
    y = torch.zeros(G, L).index_put(at, (labels > 0).float())
    neg = torch.zeros(G, L, dtype=torch.bool).index_put(at, labels <= 0)
    n_pos = y.sum(1)
    P = max(1, int(n_pos.max()))
    with torch.no_grad():  # the current order within each request, and each row's NDCG discount in it
        order = torch.argsort(s, 1, descending=True)
        rank = torch.empty_like(order).scatter_(1, order, torch.arange(L).expand(G, L).contiguous())
        disc = 1.0 / torch.log2(rank.float() + 2.0)
        ideal = torch.cumsum(1.0 / torch.log2(torch.arange(P).float() + 2.0), 0)[(n_pos.long() - 1).clamp(min=0)]
        pos = torch.argsort(-y, dim=1, stable=True)[:, :P]  # the clicked rows first: [G, P]
        is_pos = torch.arange(P)[None, :] < n_pos[:, None]
        w = ((disc.gather(1, pos)[:, :, None] - disc[:, None, :]).abs() * (is_pos[:, :, None] & neg[:, None, :])
             / ideal.clamp(min=1e-9)[:, None, None])
    diff = (s.gather(1, pos)[:, :, None] - s[:, None, :]).masked_fill(w == 0, 0.0)
    per_list = (w * F.softplus(-sigma * diff)).sum((1, 2))
    has = (n_pos > 0).float()
    if weight is None:
        return per_list.sum() / has.sum().clamp(min=1)
    lw = torch.zeros(G).index_put((inv,), weight.float())
    return (lw * per_list).sum() / (lw * has).sum().clamp(min=1e-9)


def _row_weights(p: RankingParams, lists: RankingLists) -> torch.Tensor | None:
    """Each request weighted by 1 / its scenario's share of the requests (the metric's macro mean)."""
    if not p.scenario_balance:
        return None
    counts = np.bincount(lists.scenario, minlength=int(lists.scenario.max()) + 1).astype(np.float64)
    w = lists.n_lists / (np.count_nonzero(counts) * np.maximum(counts, 1))
    return torch.from_numpy(w[lists.scenario[lists.owner]].astype(np.float32))


def _list_batches(lists: RankingLists, rng: np.random.Generator, batch_lists: int) -> list[np.ndarray]:
    """Batches of whole requests (list indices) in a random order."""
    return np.array_split(rng.permutation(lists.n_lists), max(1, lists.n_lists // batch_lists))


def _rows_of(starts: np.ndarray, batch: np.ndarray) -> np.ndarray:
    return np.concatenate([np.arange(starts[j], starts[j + 1]) for j in batch])


def fit_coarse(cfg: RankerConfig, lists: RankingLists, dense: np.ndarray, p: RankingParams,
               validate=None) -> tuple[CoarseRanker, list[float]]:
    """The coarse MLP on batches of whole requests (``p.loss``: pointwise or listwise);
    ``validate(model) -> NDCG@10`` after each epoch picks the epoch kept."""
    torch.manual_seed(p.seed)
    model = CoarseRanker(cfg)
    model.norm.fit(dense)
    x, scen = torch.from_numpy(dense), torch.from_numpy(lists.scenario[lists.owner])
    y = torch.from_numpy(lists.label)
    starts = _list_starts(lists.owner, lists.n_lists)
    opt = torch.optim.Adam(model.parameters(), lr=p.learning_rate)
    rng = np.random.default_rng(p.seed)
    keeper = BestEpoch(model, validate)
    rw = _row_weights(p, lists)
    for _ in range(p.coarse_epochs):
        model.train()
        for batch in _list_batches(lists, rng, 4 * p.batch_lists):
            rows = _rows_of(starts, batch)
            i = torch.from_numpy(rows)
            loss = _loss(p.loss, model(x[i], scen[i]), y[i], lists.owner[rows],
                         None if rw is None else rw[i])
            opt.zero_grad()
            loss.backward()
            opt.step()
        keeper.after_epoch()
    return keeper.best_model(), keeper.curve


class BestEpoch:
    """Every epoch runs; the weights of the epoch with the best ``validate(model)`` are restored at the
    end (without ``validate``: the last): the trainer's ``EarlyStopping`` that never stops."""

    def __init__(self, model: torch.nn.Module, validate=None):
        self.validate, self.curve = validate, []
        self.keeper = EarlyStopping(model, patience=sys.maxsize)

    def after_epoch(self) -> None:
        if self.validate is None:
            return
        self.curve.append(self.validate(self.keeper.model.eval()))
        self.keeper.update(len(self.curve), self.curve[-1])

    def best_model(self) -> torch.nn.Module:
        self.keeper.restore()
        return self.keeper.model.eval()


def _fine_batch(model: FineRanker, lists: RankingLists, dense: torch.Tensor, base: torch.Tensor, starts: np.ndarray,
                batch: np.ndarray, rows: np.ndarray | None = None) -> tuple[torch.Tensor, np.ndarray]:
    """Logits of the rows of the lists ``batch`` (or of ``rows``, which must belong to them); ``base``:
    every row's coarse logit (what a residual fine ranker corrects)."""
    if rows is None:
        rows = _rows_of(starts, batch)
    local = np.full(lists.n_lists, -1, np.int64)
    local[batch] = np.arange(len(batch))
    owner = torch.from_numpy(local[lists.owner[rows]])
    logits = model(torch.from_numpy(lists.recent[batch]), torch.from_numpy(lists.recent_all[batch]), owner,
                   torch.from_numpy(lists.item[rows]), torch.from_numpy(lists.scenario[lists.owner[rows]]),
                   dense[rows], base[rows])
    return logits, rows


def listwise_softmax_loss(logits: torch.Tensor, labels: torch.Tensor, owner: torch.Tensor,
                          weight: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax cross-entropy within each request: every clicked row against all rows of its request
    (the sampled-softmax view of NDCG's top-heavy goal); requests without a click add nothing;
    ``weight`` (per row): each click's term weighted by its request's."""
    groups, inv = torch.unique(owner, return_inverse=True)
    top = torch.full((len(groups),), -torch.inf).scatter_reduce(0, inv, logits.detach(), "amax")
    lse = torch.log(torch.zeros(len(groups)).index_add(0, inv, torch.exp(logits - top[inv]))) + top
    pos = labels > 0
    if not pos.any():
        return logits.sum() * 0.0
    terms = lse[inv[pos]] - logits[pos]
    return terms.mean() if weight is None else (weight[pos] * terms).sum() / weight[pos].sum()


def fit_fine(cfg: RankerConfig, lists: RankingLists, dense: np.ndarray, base: np.ndarray, p: RankingParams,
             validate=None) -> tuple[FineRanker, list[float]]:
    """The fine ranker (``base``: the coarse logits of the rows); ``validate(model) -> NDCG@10`` after
    each epoch picks the epoch kept."""
    from tqdm import tqdm

    torch.manual_seed(p.seed)
    model = FineRanker(cfg)
    model.norm.fit(dense)
    d, y, b = torch.from_numpy(dense), torch.from_numpy(lists.label), torch.from_numpy(base)
    starts = _list_starts(lists.owner, lists.n_lists)
    opt = torch.optim.Adam(model.parameters(), lr=p.fine_learning_rate or p.learning_rate)
    rng = np.random.default_rng(p.seed + 1)
    keeper = BestEpoch(model, validate)
    rw = _row_weights(p, lists)
    for epoch in range(p.fine_epochs):
        model.train()
        batches = _list_batches(lists, rng, p.batch_lists)
        for batch in tqdm(batches, desc=f"fine ranker {epoch + 1}/{p.fine_epochs}", disable=not p.progress,
                          file=sys.stderr, leave=False, mininterval=1.0):
            logits, rows = _fine_batch(model, lists, d, b, starts, batch)
            loss = _loss(p.loss, logits, y[rows], lists.owner[rows],
                         None if rw is None else rw[torch.from_numpy(rows)])
            opt.zero_grad()
            loss.backward()
            opt.step()
        keeper.after_epoch()
    return keeper.best_model(), keeper.curve


def fit_lambdarank(lists: RankingLists, dense: np.ndarray, valid: RankingLists, valid_dense: np.ndarray,
                   seed: int = 0):
    """LightGBM LambdaRank on the same rows and features (+ the scenario, categorical), early-stopped on
    the validation lists' NDCG@10; returns ``predict(lists, dense) -> scores``."""
    import lightgbm as lgb

    def dataset(ls, dn, reference=None):
        x = np.column_stack([dn, ls.scenario[ls.owner]])
        return lgb.Dataset(x, ls.label, group=np.diff(_list_starts(ls.owner, ls.n_lists)),
                           categorical_feature=[x.shape[1] - 1], reference=reference, free_raw_data=False)

    train = dataset(lists, dense)
    params = {"objective": "lambdarank", "metric": "ndcg", "eval_at": [K], "learning_rate": 0.05,
              "num_leaves": 31, "min_data_in_leaf": 50, "bagging_fraction": 0.8, "bagging_freq": 1,
              "feature_fraction": 0.8, "seed": seed, "num_threads": 1, "verbose": -1}
    booster = lgb.train(params, train, num_boost_round=400, valid_sets=[dataset(valid, valid_dense, train)],
                        callbacks=[lgb.early_stopping(30, verbose=False)])
    return lambda ls, dn: booster.predict(np.column_stack([dn, ls.scenario[ls.owner]]),
                                          num_iteration=booster.best_iteration)


# --------------------------------------------------------------------------- scoring

@torch.inference_mode()
def score_coarse(model: CoarseRanker, lists: RankingLists, dense: np.ndarray, chunk: int = 1 << 16) -> np.ndarray:
    out = np.empty(len(dense), np.float32)
    scen = lists.scenario[lists.owner]
    for lo in range(0, len(dense), chunk):
        out[lo:lo + chunk] = model(torch.from_numpy(dense[lo:lo + chunk]), torch.from_numpy(scen[lo:lo + chunk])).numpy()
    return out


@torch.inference_mode()
def score_fine(model: FineRanker, lists: RankingLists, dense: np.ndarray, base: np.ndarray, rows: np.ndarray,
               batch_lists: int = 256) -> np.ndarray:
    """Fine scores of ``rows`` (sorted by owner; ``base``: every row's coarse logit), -inf elsewhere."""
    out = np.full(len(dense), -np.inf, np.float32)
    d, coarse = torch.from_numpy(dense), torch.from_numpy(np.asarray(base, np.float32))
    owners = lists.owner[rows]
    bounds = np.searchsorted(owners, np.arange(0, lists.n_lists + batch_lists, batch_lists))
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        if lo == hi:
            continue
        sub = rows[lo:hi]
        batch = np.unique(lists.owner[sub])
        logits, _ = _fine_batch(model, lists, d, coarse, None, batch, sub)
        out[sub] = logits.numpy()
    return out


def top_per_list(lists: RankingLists, scores: np.ndarray, keep: int) -> np.ndarray:
    """Rows (sorted by owner) of each list's ``keep`` best scores."""
    top = ranked_rows(lists, scores)[:, :keep]
    return np.sort(top[top >= 0])


def cascade(lists: RankingLists, coarse_scores: np.ndarray, fine: FineRanker | None, dense: np.ndarray,
            keep: int) -> np.ndarray:
    """Final scores: the fine ranker's over the coarse top ``keep`` (ranked first), the rest by coarse."""
    if fine is None:
        return coarse_scores
    top = top_per_list(lists, coarse_scores, keep)
    fine_scores = score_fine(fine, lists, dense, coarse_scores, top)
    low = coarse_scores.astype(np.float64) - 1e6  # below every fine score, in coarse order
    return np.where(np.isfinite(fine_scores), fine_scores, low)


# --------------------------------------------------------------------------- metrics

def _auc(labels: np.ndarray, scores: np.ndarray) -> float:
    pos = labels > 0
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if not n_pos or not n_neg:
        return float("nan")
    ranks = pd.Series(scores).rank(method="average").to_numpy()
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def ranking_metrics(lists: RankingLists, scores: np.ndarray, n_scenarios: int, k: int = K) -> dict:
    """metric -> scenario id (str) | "mean" -> value, over candidate rows (``lists.candidate``)."""
    cand = lists.candidate
    top = ranked_rows(lists, np.where(cand, scores, -np.inf))[:, :k]  # [n_lists, <= k]
    row = np.maximum(top, 0)
    label = np.where((top >= 0) & cand[row], lists.label[row], 0.0)
    gain = (label / np.log2(np.arange(top.shape[1]) + 2.0)).sum(1)
    hits = label.sum(1)
    ideal = np.cumsum(1.0 / np.log2(np.arange(k) + 2.0))[np.minimum(lists.n_targets, k) - 1]
    per_list = {f"ndcg@{k}": gain / ideal, f"recall@{k}": hits / lists.n_targets}
    out: dict[str, dict[str, float]] = {m: {} for m in (*per_list, "auc")}
    shown = cand & lists.shown
    for sc in range(n_scenarios):
        mine = lists.scenario == sc
        for m, v in per_list.items():
            out[m][str(sc)] = float(v[mine].mean()) if mine.any() else float("nan")
        rows = shown & (lists.scenario[lists.owner] == sc)
        out["auc"][str(sc)] = _auc(lists.label[rows], scores[rows])
    for m in out:
        vals = [v for v in out[m].values() if v == v]
        out[m]["mean"] = float(np.mean(vals)) if vals else float("nan")
    return out


# --------------------------------------------------------------------------- the whole step

@dataclass
class RankerResult:
    cfg: RankerConfig
    coarse: CoarseRanker
    fine: FineRanker | None
    metrics: dict  # split ("val", "test") -> model ("fine", "coarse", "recall_order", ...) -> metric -> ...
    included: bool = False
    reason: str = ""
    seconds: dict = field(default_factory=dict)
    fine_curve: list = field(default_factory=list)  # validation NDCG@10 after each epoch
    coarse_curve: list = field(default_factory=list)


def holdout_users(users: np.ndarray, share: float) -> np.ndarray:
    """A stable pseudo-random share of the users (by id hash), for the validation lists."""
    return ((users.astype(np.uint64) * np.uint64(2654435761)) % np.uint64(10_000)).astype(np.int64) < share * 10_000


class RankingData:
    """The lists one ranker training needs, built once: training lists (validation split, users outside
    the holdout), validation lists (the holdout users' validation requests) and, when asked, test lists."""

    def __init__(self, data, events, scorer, p: RankingParams, with_test: bool = True):
        t0 = time.perf_counter()
        self.data, self.p = data, p
        self.ev: EventArrays = event_arrays(events, data)
        self.pit = PointInTime(self.ev, len(data.items), data.n_scenarios)
        self.co_clicks = train_co_clicks(self.ev, len(data.items))
        held = holdout_users(data.evals["val"].queries["user"], p.holdout)
        build = lambda split, **kw: build_lists(data, self.ev, self.pit, self.co_clicks, scorer, split,  # noqa: E731
                                                p.candidates, **kw)
        self.train = build("val", exposure_negatives=p.exposure_negatives, seed=p.seed, only=~held)
        self.valid = build("val", only=held)
        self.test = build("test") if with_test else None
        self.seconds = time.perf_counter() - t0

    def with_exposure(self) -> RankingLists:
        """The training rows that cover the exposure gap: the recalled candidates, clicked or drawn
        uniformly (shown or not) -- what the rankers see at serving, labelled by clicks."""
        t = self.train
        return t.take_rows(np.flatnonzero(t.candidate & ((t.label > 0) | t.sampled)))

    def impressions_only(self) -> RankingLists:
        """The training rows of the impressions alone (the ablation: no recalled-but-unshown item)."""
        return self.train.take_rows(np.flatnonzero(self.train.shown))


def ranker_config(data, p: RankingParams, branches: list[str]) -> RankerConfig:
    return RankerConfig(n_items=len(data.items), n_scenarios=data.n_scenarios, seq_len=data.seq_len,
                        branches=list(branches), dim=p.dim, residual=p.residual, recall_weight=p.recall_weight,
                        dropout=p.dropout)


def evaluate_cascade(lists: RankingLists, dense: np.ndarray, coarse: CoarseRanker, fine: FineRanker | None,
                     p: RankingParams, n_scenarios: int) -> dict:
    """Metrics of the recall order, the coarse order and the cascade (``fine``) on ``lists``."""
    coarse_scores = score_coarse(coarse, lists, dense)
    out = {"recall_order": ranking_metrics(lists, -lists.recall_rank.astype(np.float64), n_scenarios),
           "coarse": ranking_metrics(lists, coarse_scores, n_scenarios)}
    if fine is not None:
        out["fine"] = ranking_metrics(lists, cascade(lists, coarse_scores, fine, dense, p.coarse_keep), n_scenarios)
        kept = top_per_list(lists, np.where(lists.candidate, coarse_scores, -np.inf), p.coarse_keep)
        out["coarse_keep_recall"] = float(lists.label[kept].sum() / max(1.0, lists.label[lists.candidate].sum()))
    return out


def train_rankers(rd: RankingData, p: RankingParams, branches: list[str], train: RankingLists | None = None) -> RankerResult:
    """Coarse then fine on ``train`` (default: the training lists with exposure negatives), the gate on
    the validation lists, and the test figures when ``rd`` has test lists."""
    n_s = rd.data.n_scenarios
    train = train or rd.with_exposure()
    cfg = ranker_config(rd.data, p, branches)
    t0 = time.perf_counter()
    dense = dense_of(train, branches)
    valid_dense = dense_of(rd.valid, branches)

    def validate_coarse(model):
        return ranking_metrics(rd.valid, score_coarse(model, rd.valid, valid_dense), n_s)["ndcg@10"]["mean"]

    coarse, coarse_curve = fit_coarse(cfg, train, dense, p, validate_coarse)
    t1 = time.perf_counter()
    valid_coarse = score_coarse(coarse, rd.valid, valid_dense)

    def validate(model):
        scores = cascade(rd.valid, valid_coarse, model, valid_dense, p.coarse_keep)
        return ranking_metrics(rd.valid, scores, n_s)["ndcg@10"]["mean"]

    fine, curve = fit_fine(cfg, train, dense, score_coarse(coarse, train, dense), p, validate)
    t2 = time.perf_counter()
    metrics = {"val": evaluate_cascade(rd.valid, valid_dense, coarse, fine, p, n_s)}
    if rd.test is not None:
        metrics["test"] = evaluate_cascade(rd.test, dense_of(rd.test, branches), coarse, fine, p, n_s)
    ranked = metrics["val"]["fine"]["ndcg@10"]["mean"]
    base = metrics["val"]["recall_order"]["ndcg@10"]["mean"]
    included = ranked > base * (1 + p.min_gain)
    reason = (f"val ndcg@10 {ranked:.4f} {'>' if included else '<='} recall order {base:.4f}"
              + (f" x (1 + {p.min_gain})" if p.min_gain else ""))
    return RankerResult(cfg, coarse, fine, metrics, included, reason,
                        {"data": rd.seconds, "coarse": t1 - t0, "fine": t2 - t1}, curve, coarse_curve)
