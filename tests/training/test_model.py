import torch

from training.model import (MLSAT, SASS, ModelConfig, ScenarioAdaptiveGate, distinct_softmax_loss,
                            sampled_softmax_loss, scenario_contrastive_loss)


def test_gate_shapes_and_ranges():
    torch.manual_seed(0)
    gate = ScenarioAdaptiveGate(width=8, bias_dim=4)
    s, g, b = torch.randn(32, 8), torch.randn(32, 8), torch.randn(32, 4)
    h = gate(s, g, b)
    assert h.shape == (32, 8)
    a = torch.sigmoid(gate.adaptive(torch.cat([s, g, b], -1)))
    t = a * g
    z = torch.sigmoid(gate.update(torch.cat([s, t], -1)))
    assert ((a > 0) & (a < 1)).all() and ((z > 0) & (z < 1)).all()
    # the output is an element-wise convex mix of the scenario's own and the transferred info
    lo, hi = torch.minimum(s, t), torch.maximum(s, t)
    assert ((h >= lo - 1e-6) & (h <= hi + 1e-6)).all()
    assert torch.allclose(h, z * s + (1 - z) * t)


def test_global_dropout_only_in_training():
    torch.manual_seed(0)
    gate = ScenarioAdaptiveGate(width=8, bias_dim=4, global_dropout=1.0)
    s, g, b = torch.randn(16, 8), torch.randn(16, 8), torch.randn(16, 4)
    gate.train()
    z = torch.sigmoid(gate.update(torch.cat([s, torch.zeros_like(s)], -1)))
    assert torch.allclose(gate(s, g, b), z * s)  # every sample's global input dropped
    gate.eval()
    assert not torch.allclose(gate(s, g, b), z * s)


def test_mlsat_mixed_batch_matches_per_scenario_runs():
    torch.manual_seed(0)
    m = MLSAT(in_dim=10, hidden_dims=[16, 8], n_scenarios=3, bias_dim=4, global_dropout=0.0).eval()
    x, b = torch.randn(12, 10), torch.randn(12, 4)
    scen = torch.tensor([0, 1, 2] * 4)
    h, g = m(x, scen, b)
    assert h.shape == (12, 8) and g.shape == (12, 8)
    for k in range(3):
        rows = scen == k
        hk, gk = m(x[rows], scen[rows], b[rows])
        assert torch.allclose(h[rows], hk, atol=1e-6) and torch.allclose(g[rows], gk, atol=1e-6)


def test_towers_give_one_normalised_vector_per_scenario():
    cfg = ModelConfig(n_users=5, n_items=7, n_scenarios=3, dim=16, hidden_dims=[16, 16])
    model = SASS(cfg).eval()
    items = torch.arange(1, 8)
    vecs = [model.encode_item(items, torch.full_like(items, k))[0] for k in range(3)]
    for v in vecs:
        assert v.shape == (7, 16) and torch.allclose(v.norm(dim=1), torch.ones(7), atol=1e-5)
    assert not torch.allclose(vecs[0], vecs[1])  # each item has one vector per scenario
    f = {"user": torch.tensor([1, 2, 0]), "scenario": torch.tensor([0, 1, 2]),
         "recent_clicks": torch.tensor([[1, 2, 0], [0, 0, 0], [3, 0, 0]]),
         "recent_clicks_all": torch.tensor([[1, 2, 3], [4, 0, 0], [0, 0, 0]]),
         "scenario_click_share": torch.rand(3, 3)}
    u, g = model.encode_user(f)
    assert u.shape == (3, 16) and g.shape == (3, 16)
    gv = model.user_tower.global_vector(g)  # the auxiliary loss's global vectors
    assert gv.shape == (3, 16) and torch.allclose(gv.norm(dim=1), torch.ones(3), atol=1e-5)
    assert model.user_tower.global_vector(g[:1]).allclose(gv[:1])  # per row: a subset is the same rows


def test_contrastive_loss_prefers_aligned_views():
    torch.manual_seed(0)
    n = torch.nn.functional.normalize
    a, noise = n(torch.randn(64, 16), dim=1), n(torch.randn(64, 16), dim=1)
    ids = torch.arange(64).repeat(2)  # two views of each of 64 users
    assert scenario_contrastive_loss(torch.cat([a, a]), ids, 0.1) < scenario_contrastive_loss(
        torch.cat([a, noise]), ids, 0.1)
    # a pair's loss is the InfoNCE of its positive against the other users' views only
    z, ids = n(torch.randn(7, 16), dim=1), torch.tensor([0, 0, 0, 1, 1, 2, 3])
    s = z @ z.T / 0.1
    expect = []
    for i in range(7):
        for j in range(7):
            if i != j and ids[i] == ids[j]:
                cols = torch.cat([s[i, j:j + 1], s[i, ids != ids[i]]])
                expect.append(-torch.log_softmax(cols, 0)[0])
    assert len(expect) == 8  # 3*2 ordered pairs of user 0, 2 of user 1; users 2, 3: negatives only
    assert torch.allclose(scenario_contrastive_loss(z, ids, 0.1), torch.stack(expect).mean(), atol=1e-5)
    # a batch with no two views of one entity has nothing to learn (and no NaN)
    assert scenario_contrastive_loss(z[3:], torch.arange(4), 0.1).item() == 0.0


def test_distinct_softmax_loss():
    torch.manual_seed(0)
    n = torch.nn.functional.normalize
    u, v, lq = n(torch.randn(6, 8), dim=1), n(torch.randn(6, 8), dim=1), torch.randn(6)
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    # with every item in the batch once, it is the in-batch softmax (columns reordered), also
    # when only the first m rows are queries
    for m in (6, 2):
        full = sampled_softmax_loss(u[:m], v[perm], perm, 0.1, lq[perm])
        assert torch.allclose(full, distinct_softmax_loss(u[:m], v, perm[:m], 0.1, lq), atol=1e-5)
    # a batch of 12 clicks on 5 items: each item is one column; aligned users score lower
    pos = torch.tensor([0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1])
    w = n(torch.randn(12, 8), dim=1)
    assert distinct_softmax_loss(v[pos], v[:5], pos, 0.1) < distinct_softmax_loss(w, v[:5], pos, 0.1)
    # the correction raises a rarely included item's logit (as log-q does): easier as a
    # positive, harder as a negative
    v5, lp = v[:5], torch.tensor([0.0, 0.0, 0.0, 0.0, -5.0])
    for item, easier in ((4, True), (0, False)):
        q, p = w[:1], torch.tensor([item])
        assert (distinct_softmax_loss(q, v5, p, 0.1, lp) < distinct_softmax_loss(q, v5, p, 0.1)) == easier
