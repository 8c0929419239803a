import numpy as np
import pandas as pd

from sassflow.datasets import load_events as load_dataset_events
from training.data import NO_TIME, TEST, TRAIN, VAL, prepare, split_by_user_time, user_features


def test_point_in_time_features_see_only_earlier_clicks(syn_events, syn_data):
    d = syn_data
    tr = d.train
    # rebuild every example's features the slow way from the raw train clicks and compare
    ev = syn_events
    click = ev[ev["event_type"] == "click"]
    u = d.users.index(click["user_id"].to_numpy())
    i = d.items.index(click["item_id"].to_numpy())
    t = click["event_time"].to_numpy()
    s = pd.Categorical(click["scenario"], categories=d.scenarios).codes
    train_ev = ev[split_by_user_time(ev) == TRAIN]
    u_all, t_all = d.users.index(train_ev["user_id"].to_numpy()), train_ev["event_time"].to_numpy()
    rng = np.random.default_rng(0)
    for row in rng.choice(len(tr["item"]), 50, replace=False):
        uu, ss, tt = tr["user"][row], tr["scenario"][row], tr["time"][row]
        before = (u == uu) & (t < tt)
        order = np.argsort(-t[before], kind="stable")
        hist_items, hist_scen, hist_t = i[before][order], s[before][order], t[before][order]
        assert (hist_t < tt).all()
        got = tr["recent_clicks_all"][row][tr["recent_clicks_all"][row] > 0]
        assert len(got) == min(20, len(hist_items))
        if len(hist_items):  # the 20 most recent (clicks of one request share a timestamp)
            assert set(got) <= set(hist_items[hist_t >= hist_t[min(19, len(hist_t) - 1)]])
        n_s = int((hist_scen == ss).sum())
        assert (tr["recent_clicks"][row] > 0).sum() == min(20, n_s)
        # share: clicks in the 168 hour buckets ending with the hour of the user's newest event
        newest = t_all[(u_all == uu) & (t_all < tt)].max()
        lo = (newest // 3_600_000 - 167) * 3_600_000
        win = hist_t >= lo
        expect = (hist_scen[win] == ss).sum() / max(win.sum(), 1)
        np.testing.assert_allclose(tr["scenario_click_share"][row][ss], expect, rtol=1e-6)
        # the example's own click is never in its features unless clicked before
        if not ((i[before]) == tr["item"][row]).any():
            assert tr["item"][row] not in tr["recent_clicks_all"][row]


def test_last_k_is_most_recent_first():
    hu = np.array([1, 1, 1, 2]); hs = np.zeros(4, int); hi = np.array([10, 11, 12, 13]); ht = np.array([1, 2, 3, 1])
    f = user_features(hu, hs, hi, ht, np.array([1, 1, 2]), np.zeros(3, int), np.array([3, NO_TIME, 1]), 1, 4)
    assert f["recent_clicks"].tolist() == [[11, 10, 0, 0], [12, 11, 10, 0], [0, 0, 0, 0]]


def test_split_per_user_by_time(syn_events):
    split = split_by_user_time(syn_events)
    imp = syn_events["event_type"].to_numpy() == "impression"
    df = syn_events[imp].assign(split=split[imp])
    for _, g in list(df.groupby("user_id"))[:30]:
        g = g.sort_values("event_time", kind="stable")
        assert (np.diff(g["split"].to_numpy()) >= 0).all()  # train, then val, then test
        n = len(g)
        assert (g["split"] == TEST).sum() == n // 10 and (g["split"] == VAL).sum() == n // 10
        assert (g["split"] == TRAIN).sum() >= 1
    # a click shares the split of its impression (except when one request showed the same item
    # twice and the boundary falls between the two copies: a handful of clicks)
    clk = ~imp
    key = syn_events["event_id"].str.removesuffix("-c")
    imp_split = pd.Series(split[imp], index=key[imp].to_numpy())
    assert (imp_split.loc[key[clk].to_numpy()].to_numpy() != split[clk]).mean() < 1e-3


def test_movielens_loader_and_protocol(tmp_path):
    (tmp_path / "movies.csv").write_text(
        "item_id,title,year,genres\n1,A,1995,Animation|Comedy\n2,B,1995,Horror\n3,C,1995,Western\n4,D,1990,Opera\n")
    rows = [(u, it, r, 978300000 + 10 * k) for u in (1, 2) for k, (it, r) in
            enumerate([(1, 5), (2, 3), (3, 4), (4, 5), (1, 2), (2, 4), (3, 5), (4, 4), (1, 4), (2, 5)])]
    pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"]).sort_values("timestamp").to_csv(
        tmp_path / "ratings.csv.gz", index=False)
    (tmp_path / "users.csv").write_text("user_id,gender,age,occupation,zip\n1,F,1,10,0\n2,M,1,10,0\n")
    ev = load_dataset_events(tmp_path, _scenarios(tmp_path))
    assert len(ev) == 20 + sum(r >= 4 for _, _, r, _ in rows)
    scen = dict(zip(ev["item_id"], ev["scenario"]))
    assert scen == {1: "family", 2: "thriller", 3: "action", 4: "drama"}
    assert (ev["event_time"] % 1000 == 0).all() and ev["event_time"].is_monotonic_increasing
    d = prepare(ev, ["family", "thriller", "action", "comedy", "drama"])
    assert len(d.evals["test"].queries["user"]) > 0


def _scenarios(tmp_path):
    import shutil

    from sassflow.datasets import SCENARIOS_FILE  # the MovieLens genre groups the project ships

    shutil.copy(SCENARIOS_FILE, tmp_path / "scenarios.json")
    return tmp_path / "scenarios.json"


def test_click_share_uses_the_7d_window_ending_at_the_newest_event():
    H, D = 3_600_000, 86_400_000
    # user 1: a scenario-0 click 30 days ago, then scenario-1 clicks and a late impression
    hu, hs, hi = np.array([1, 1, 1]), np.array([0, 1, 1]), np.array([5, 6, 7])
    ht = np.array([0, 30 * D, 30 * D + H])
    eu, et = np.array([1, 1, 1, 1]), np.array([0, 30 * D, 30 * D + H, 31 * D])
    q_t = np.array([30 * D + 2 * H, NO_TIME, 5 * D])
    f = user_features(hu, hs, hi, ht, np.ones(3, int), np.zeros(3, int), q_t, 2, 4, eu, et)
    np.testing.assert_allclose(f["scenario_click_share"], [[0, 1], [0, 1], [1, 0]])
    assert f["recent_clicks"].tolist()[0] == [5, 0, 0, 0]  # sequences are not windowed
