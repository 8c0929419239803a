import torch

from training.model import MLSAT, SASS, ModelConfig, ScenarioAdaptiveGate, scenario_contrastive_loss


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


def test_contrastive_loss_prefers_aligned_views():
    torch.manual_seed(0)
    a = torch.nn.functional.normalize(torch.randn(64, 16), dim=1)
    noise = torch.nn.functional.normalize(torch.randn(64, 16), dim=1)
    assert scenario_contrastive_loss(a, a, 0.1) < scenario_contrastive_loss(a, noise, 0.1)
