"""Training data: events in, split + point-in-time features + batches out.

Everything here is pure array work on one events DataFrame with the offline-history
columns (event_id, user_id, item_id, scenario, event_type, event_time ms, dwell_ms);
the only I/O is the history loader at the top (a dataset folder is read by
``sassflow.datasets.load_events``).

Point-in-time rule: a feature of an example at time t only sees clicks with
event_time < t (strictly), found with one ``searchsorted`` over a (key, time) sorted
array, so 1M events take seconds and no Python loop runs per sample.

The user features carry the Feast online names so serving can feed the model straight
from the online store:

- ``recent_clicks``: last ``seq_len`` clicked items in the example's scenario, most recent first;
- ``recent_clicks_all``: last ``seq_len`` clicked items in any scenario, most recent first;
- ``scenario_click_share``: the user's clicks per scenario / all clicks (settings.scenarios
  order) in the 7-day window (168 hour tiles) as of the example's time, strictly before it: the
  window serving evaluates from the online ``user_profile`` tiles as of the request time
  (``features.windows``; ``tests/training/test_data.py`` compares the two at many times).

As-of times: a train example is as of its click; a pre-training view as of just after the user's
last train event; an evaluation query as of the user's first event of the evaluated split (the
request it stands for), seeing every event before the split.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from sassflow.contracts.features import SEQ_LEN, WINDOW_7D, window_start_ms
from sassflow.contracts.history import EVENT_COLUMNS
from training.vocab import Vocab

TRAIN, VAL, TEST = 0, 1, 2
NO_TIME = np.iinfo(np.int64).max  # "as of now": every history click counts


# --------------------------------------------------------------------------- loader (I/O)

def load_history_events(offline_dir: Path, start_ms: int | None = None, end_ms: int | None = None,
                        scenarios: list[str] | None = None) -> pd.DataFrame:
    from streaming.history import read_history

    df = read_history(offline_dir, start_ms, end_ms, scenarios)
    return df[[c for c in EVENT_COLUMNS if c in df.columns]]


# --------------------------------------------------------------------------- split

def split_by_user_time(events: pd.DataFrame, val_frac: float = 0.1, test_frac: float = 0.1) -> np.ndarray:
    """Per user by time: the last ``test_frac`` of a user's interactions are test, the
    ``val_frac`` before them validation, the rest train (at least one train interaction).

    Interactions are the impressions (a click inherits the split of its latest impression of
    the same user and item at or before it), so an impression and its click never straddle a
    boundary. A history without impressions splits its clicks directly."""
    n = len(events)
    split = np.zeros(n, dtype=np.int8)
    if n == 0:
        return split
    is_imp = (events["event_type"] == "impression").to_numpy()
    if not is_imp.any():
        is_imp = np.ones(n, dtype=bool)
    anchors = events.loc[is_imp, ["user_id", "item_id", "event_time"]].copy()
    anchors["_row"] = np.flatnonzero(is_imp)
    anchors = anchors.sort_values(["user_id", "event_time", "_row"], kind="stable")
    rank = anchors.groupby("user_id", sort=False).cumcount().to_numpy()
    size = anchors.groupby("user_id", sort=False)["item_id"].transform("size").to_numpy()
    n_test = np.floor(size * test_frac).astype(np.int64)
    n_val = np.floor(size * val_frac).astype(np.int64)
    n_test = np.minimum(n_test, size - 1)  # keep >= 1 train interaction
    n_val = np.minimum(n_val, size - 1 - n_test)
    s = np.where(rank >= size - n_test, TEST, np.where(rank >= size - n_test - n_val, VAL, TRAIN))
    split[anchors["_row"].to_numpy()] = s
    rest = np.flatnonzero(~is_imp)
    if len(rest):
        anchors = anchors.assign(_split=s).sort_values("event_time", kind="stable")
        q = events.iloc[rest][["user_id", "item_id", "event_time"]].assign(_row=rest)
        q = q.sort_values("event_time", kind="stable")
        m = pd.merge_asof(q, anchors[["user_id", "item_id", "event_time", "_split"]],
                          on="event_time", by=["user_id", "item_id"], direction="backward")
        miss = m["_split"].isna().to_numpy()
        if miss.any():  # no impression of that item: the user's latest interaction decides
            m2 = pd.merge_asof(q[miss], anchors[["user_id", "event_time", "_split"]],
                               on="event_time", by="user_id", direction="backward")
            m.loc[miss, "_split"] = m2["_split"].to_numpy()
        split[m["_row"].to_numpy()] = m["_split"].fillna(TRAIN).to_numpy().astype(np.int8)
    return split


# --------------------------------------------------------------------------- point-in-time features

def _last_k_before(h_key, h_time, h_item, q_key, q_time, k):
    """For each query (key, t): the last ``k`` history items with the same key and time < t
    (most recent first, 0 = none) and how many there are."""
    times = np.unique(np.concatenate([h_time, q_time]))
    span = len(times) + 1
    order = np.lexsort((h_time, h_key))
    hk = h_key[order].astype(np.int64) * span + np.searchsorted(times, h_time[order])
    items = h_item[order]
    qk = q_key.astype(np.int64) * span
    pos = np.searchsorted(hk, qk + np.searchsorted(times, q_time), side="left")
    start = np.searchsorted(hk, qk, side="left")
    idx = pos[:, None] - 1 - np.arange(k)[None, :]
    valid = idx >= start[:, None]
    seq = np.where(valid, items[np.clip(idx, 0, max(len(items) - 1, 0))] if len(items) else 0, 0)
    return seq.astype(np.int64), (pos - start).astype(np.int64)


def user_features(hist_user, hist_scen, hist_item, hist_time, q_user, q_scen, q_time,
                  n_scenarios: int, seq_len: int, as_of=None) -> dict[str, np.ndarray]:
    """Point-in-time user features of queries (user index, scenario index, time ms) from
    history clicks (index arrays): the sequences see the clicks before ``q_time``, the click
    share the clicks before ``as_of`` (default ``q_time``) in the 7d window as of ``as_of``.
    Items and users are vocabulary indices (0 = none)."""
    seq_s, _ = _last_k_before(hist_user * n_scenarios + hist_scen, hist_time, hist_item,
                              q_user * n_scenarios + q_scen, q_time, seq_len)
    seq_a, _ = _last_k_before(hist_user, hist_time, hist_item, q_user, q_time, seq_len)
    as_of = q_time if as_of is None else as_of
    lo = window_start_ms(WINDOW_7D, as_of)
    counts = np.zeros((len(q_user), n_scenarios), dtype=np.float64)
    for s in range(n_scenarios):
        m = hist_scen == s
        _, before_t = _last_k_before(hist_user[m], hist_time[m], hist_item[m], q_user, as_of, 0)
        _, before_lo = _last_k_before(hist_user[m], hist_time[m], hist_item[m], q_user, lo, 0)
        counts[:, s] = before_t - before_lo
    share = (counts / np.maximum(counts.sum(1, keepdims=True), 1)).astype(np.float32)
    return {"user": q_user.astype(np.int64), "scenario": q_scen.astype(np.int64),
            "recent_clicks": seq_s, "recent_clicks_all": seq_a, "scenario_click_share": share}


# --------------------------------------------------------------------------- the prepared data set

@dataclass
class EvalSet:
    """One evaluation split: per (user, scenario) with target clicks, features as of the split."""

    queries: dict[str, np.ndarray]  # user features of each query
    targets: list[np.ndarray]  # per scenario: (query row, catalog col) pairs of test clicks
    excluded: list[np.ndarray]  # per scenario: (query row, catalog col) pairs seen before


@dataclass
class TrainingData:
    scenarios: list[str]
    users: Vocab
    items: Vocab
    seq_len: int
    train: dict[str, np.ndarray]  # one row per train click: user features + "item"
    views: dict[str, np.ndarray]  # one row per (user, visited scenario) as of the end of train
    item_views: np.ndarray  # [n, 2] (item, scenario) pairs seen in train (impressions count)
    catalogs: list[np.ndarray]  # per scenario: item indices seen in that scenario
    item_clicks: np.ndarray  # [n_scenarios, n_items + 1] train click counts
    evals: dict[str, EvalSet] = field(default_factory=dict)
    window: tuple[int, int] = (0, 0)  # event-time range (ms) of the events used
    n_events: int = 0

    @property
    def n_scenarios(self) -> int:
        return len(self.scenarios)

    def subset_scenario(self, s: int) -> dict[str, np.ndarray]:
        m = self.train["scenario"] == s
        return {k: v[m] for k, v in self.train.items()}


def prepare(events: pd.DataFrame, scenarios: list[str], seq_len: int = SEQ_LEN,
            val_frac: float = 0.1, test_frac: float = 0.1, with_test: bool = True) -> TrainingData:
    """Vocabularies, the per-user time split, point-in-time train examples, pre-training
    views, per-scenario catalogs and the evaluation sets of one events frame."""
    ev = events[events["scenario"].isin(scenarios)].reset_index(drop=True)
    users = Vocab(np.unique(ev["user_id"].to_numpy(np.int64)))
    items = Vocab(np.unique(ev["item_id"].to_numpy(np.int64)))
    u = users.index(ev["user_id"].to_numpy(np.int64))
    i = items.index(ev["item_id"].to_numpy(np.int64))
    s = pd.Categorical(ev["scenario"], categories=scenarios).codes.astype(np.int64)
    t = ev["event_time"].to_numpy(np.int64)
    click = (ev["event_type"] == "click").to_numpy()
    split = split_by_user_time(ev, val_frac, test_frac) if with_test else np.zeros(len(ev), np.int8)
    S = len(scenarios)

    tr = split == TRAIN
    m = click & tr
    hist_train = (u[m], s[m], i[m], t[m])
    train = user_features(*hist_train, u[m], s[m], t[m], S, seq_len)
    train["item"] = i[m]
    train["time"] = t[m]

    # pre-training views: every (user, scenario) the user visited in train (impressions count), as
    # of just after the user's last train event
    vis = np.unique(np.stack([u[tr], s[tr]], 1), axis=0)
    last_train = np.zeros(len(users) + 1, np.int64)
    np.maximum.at(last_train, u[tr], t[tr])
    views = user_features(*hist_train, vis[:, 0], vis[:, 1], np.full(len(vis), NO_TIME), S, seq_len,
                          as_of=last_train[vis[:, 0]] + 1)

    item_views = np.unique(np.stack([i[tr], s[tr]], 1), axis=0).astype(np.int64)
    catalogs = [np.unique(i[s == k]) for k in range(S)]
    item_clicks = np.zeros((S, len(items) + 1), dtype=np.int64)
    np.add.at(item_clicks, (hist_train[1], hist_train[2]), 1)

    data = TrainingData(scenarios=list(scenarios), users=users, items=items, seq_len=seq_len,
                        train=train, views=views, item_views=item_views, catalogs=catalogs, item_clicks=item_clicks,
                        window=(int(t.min()) if len(t) else 0, int(t.max()) if len(t) else 0),
                        n_events=len(ev))
    if with_test:
        for name, code in (("val", VAL), ("test", TEST)):
            data.evals[name] = _eval_set(u, s, i, t, click, split, code, catalogs, len(users), len(items),
                                         S, seq_len)
    return data


def _eval_set(u, s, i, t, click, split, code, catalogs, n_users, n_items, S, seq_len) -> EvalSet:
    seen = split < code
    tgt = click & (split == code)
    pairs = np.unique(np.stack([u[tgt], s[tgt]], 1), axis=0)
    m = click & seen
    # as of the request each query stands for: the user's first event of the split (the events before
    # the split at that same millisecond count, as they would have arrived first)
    first = np.full(n_users + 1, NO_TIME, np.int64)
    np.minimum.at(first, u[split == code], t[split == code])
    queries = user_features(u[m], s[m], i[m], t[m], pairs[:, 0], pairs[:, 1], np.full(len(pairs), NO_TIME),
                            S, seq_len, as_of=first[pairs[:, 0]] + 1)
    targets, excluded = [], []
    for k in range(S):
        rows = np.flatnonzero(pairs[:, 1] == k)
        row_of = np.full(n_users + 1, -1, np.int64)
        row_of[pairs[rows, 0]] = rows
        col_of = np.full(n_items + 1, -1, np.int64)
        col_of[catalogs[k]] = np.arange(len(catalogs[k]))

        def pairs_of(mask):
            r, c = row_of[u[mask]], col_of[i[mask]]
            ok = (r >= 0) & (c >= 0)
            return np.unique(np.stack([r[ok], c[ok]], 1), axis=0).reshape(-1, 2)

        ex = pairs_of(seen)  # any event the user had before the split, in any scenario
        tg = pairs_of(tgt & (s == k))
        if len(tg) and len(ex):  # an item seen before cannot be a hit: drop it from the targets
            key_ex = ex[:, 0] * (n_items + 2) + ex[:, 1]
            tg = tg[~np.isin(tg[:, 0] * (n_items + 2) + tg[:, 1], key_ex)]
        targets.append(tg)
        excluded.append(ex)
    return EvalSet(queries=queries, targets=targets, excluded=excluded)
