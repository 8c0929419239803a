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
        # share: clicks in the 168 hour tiles as of the example's time
        lo = (tt // 3_600_000 - 167) * 3_600_000
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


def test_click_share_uses_the_7d_window_as_of_the_query_time():
    H, D = 3_600_000, 86_400_000
    # user 1: a scenario-0 click 30 days ago, then scenario-1 clicks
    hu, hs, hi = np.array([1, 1, 1]), np.array([0, 1, 1]), np.array([5, 6, 7])
    ht = np.array([0, 30 * D, 30 * D + H])
    q_t = np.array([30 * D + 2 * H, 45 * D, 5 * D])
    f = user_features(hu, hs, hi, ht, np.ones(3, int), np.zeros(3, int), q_t, 2, 4)
    # idle for two weeks: the 7d window is empty, as serving reads it as of that time
    np.testing.assert_allclose(f["scenario_click_share"], [[0, 1], [0, 0], [1, 0]])
    assert f["recent_clicks"].tolist()[1] == [5, 0, 0, 0]  # sequences are not windowed
    g = user_features(hu, hs, hi, ht, np.ones(1, int), np.zeros(1, int), np.array([NO_TIME]), 2, 4,
                      as_of=np.array([30 * D + H]))  # strictly before as_of: the click at 30d + 1h is out
    np.testing.assert_allclose(g["scenario_click_share"], [[0, 1]])


def test_training_features_equal_the_online_tiles_read_as_of_the_same_time():
    """The vectorised builder and serving's read path (stream aggregation -> stored tiles ->
    features.windows as of t) give the same click share and sequences, at many times."""
    from features.windows import evaluate
    from sassflow.contracts.features import USER_PROFILE, USER_SCENARIO_STATS
    from streaming.aggregate import batch_features
    from streaming.replay import frame_to_evs
    from streaming.sources import SyntheticSource, events_frame

    scen = ["family", "thriller", "action", "comedy", "drama"]
    ev = events_frame(SyntheticSource(n_users=12, n_items=40, n_events=3000, scenarios=scen, seed=4,
                                      mean_gap_ms=400_000.0).events())
    clicks = ev[ev["event_type"] == "click"]
    cu, ci, ct = (clicks[c].to_numpy(np.int64) for c in ("user_id", "item_id", "event_time"))
    cs = pd.Categorical(clicks["scenario"], categories=scen).codes.astype(np.int64)
    rng = np.random.default_rng(0)
    lo, hi = int(ev["event_time"].min()), int(ev["event_time"].max()) + 10 * 86_400_000
    times = np.sort(rng.integers(lo, hi, 40))
    checked = 0
    for t in times:
        rows = batch_features(frame_to_evs(ev[ev["event_time"] < t]), scen)  # what the stream holds at t
        keys = sorted(rows.user_scenario)
        if not keys:
            continue
        q_u = np.array([u for u, _ in keys]); q_s = np.array([scen.index(s) for _, s in keys])
        f = user_features(cu, cs, ci + 1, ct, q_u, q_s, np.full(len(keys), t), len(scen), 20)  # 0 = none
        for k, (u, s) in enumerate(keys):
            online = evaluate(USER_SCENARIO_STATS, rows.user_scenario[(u, s)][0], int(t), len(scen))
            profile = evaluate(USER_PROFILE, rows.user_profile[u][0], int(t), len(scen))
            np.testing.assert_allclose(f["scenario_click_share"][k], profile["scenario_click_share"], rtol=1e-6)
            assert [x - 1 for x in f["recent_clicks"][k] if x] == online["recent_clicks"]
            assert [x - 1 for x in f["recent_clicks_all"][k] if x] == profile["recent_clicks_all"]
            checked += 1
    assert checked > 200
