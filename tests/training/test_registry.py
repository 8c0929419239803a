from pathlib import Path

import numpy as np
import pytest
import torch

from training.baselines import model_config
from sassflow.contracts.artifacts import ModelArtifact
from serving.towers import load_sass_tower as load_user_encoder
from training.export import ArtifactError, export_artifacts
from training.model import SASS
from training.registry import ModelRegistry, quality_gate


def _metrics(recall):
    return {"val": {"recall@50": {"mean": recall}}, "test": {"recall@50": {"mean": recall}}}


@pytest.fixture
def artifact(syn_data, settings, tmp_path):
    torch.manual_seed(0)
    model = SASS(model_config(syn_data, settings.training)).eval()
    out = tmp_path / "art"
    export_artifacts(model, out, syn_data)
    return model, out


def _registry(settings):
    return ModelRegistry.from_settings(settings)


def test_export_and_user_encoder(artifact, syn_data):
    model, out = artifact
    for name in syn_data.scenarios:
        arrays = ModelArtifact(out).read_scenario(name)
        items, vec, pop = arrays.item_ids, arrays.vectors, arrays.popular
        assert vec.dtype == np.float32 and vec.shape == (len(items), model.cfg.dim)
        np.testing.assert_allclose(np.linalg.norm(vec, axis=1), 1.0, rtol=1e-4)
        assert set(pop) <= set(items)
    enc = load_user_encoder(out)
    uid = int(syn_data.users.ids[3])
    rows = [{"user_id": uid, "recent_clicks": [int(syn_data.items.ids[0]), 10**12], "recent_clicks_all": None,
             "scenario_click_share": [0.2] * 5, "clk_7d": 3},
            {"user_id": 10**15},  # unknown user, no features: defaults
            {"user_id": None, "recent_clicks": [None]}]
    u = enc.encode(rows, "thriller")
    assert u.shape == (3, model.cfg.dim) and u.dtype == np.float32 and np.isfinite(u).all()
    # the same vector the model gives for the same features
    f = {"user": torch.tensor([syn_data.users.index([uid])[0]]), "scenario": torch.tensor([1]),
         "recent_clicks": torch.tensor([[1] + [0] * 19]), "recent_clicks_all": torch.zeros(1, 20, dtype=torch.long),
         "scenario_click_share": torch.full((1, 5), 0.2)}
    np.testing.assert_allclose(u[0], model.encode_user(f)[0][0].detach().numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError):
        enc.encode(rows, "no-such-scenario")


def test_registry_round_trip(artifact, settings):
    _, out = artifact
    reg = _registry(settings)
    v = reg.register(out, metrics=_metrics(0.4), data_start_ms=1, data_end_ms=2, config={"kind": "sass"},
                     feature_hash="abc")
    again = _registry(settings).get(v.id)  # a fresh engine on the same database
    assert again.status == "candidate" and again.metrics["val"]["recall@50"]["mean"] == 0.4
    assert (again.data_start_ms, again.data_end_ms, again.feature_hash) == (1, 2, "abc")
    assert again.artifact_sha256 == v.artifact_sha256 and reg.verify_artifact(v.id)
    assert reg.latest().id == v.id and reg.promoted() is None
    ok, reason = quality_gate(reg, v, 0.02)
    assert ok and reg.promoted().id == v.id
    reg.mark_published(v.id, "bundle-1")
    assert reg.get(v.id).published and reg.get(v.id).bundle_id == "bundle-1"
    assert [x.id for x in reg.list()] == [v.id]


def test_gate_refuses_worse_model_and_rollback(artifact, settings):
    _, out = artifact
    reg = _registry(settings)
    good = reg.register(out, metrics=_metrics(0.40))
    assert quality_gate(reg, good, 0.02)[0]
    close = reg.register(out, metrics=_metrics(0.39))  # within tolerance: promoted
    assert quality_gate(reg, close, 0.02)[0]
    assert reg.get(good.id).status == "retired"
    worse = reg.register(out, metrics=_metrics(0.30))
    ok, reason = quality_gate(reg, worse, 0.02)
    assert not ok and "0.3000" in reason
    assert reg.get(worse.id).status == "rejected" and reg.promoted().id == close.id
    back = reg.rollback()
    assert back.id == good.id and reg.promoted().id == good.id


def test_corrupted_artifact_is_refused(artifact, settings):
    _, out = artifact
    reg = _registry(settings)
    v = reg.register(out, metrics=_metrics(0.5))
    stored = Path(v.artifact_path)  # the registry's own copy (read-only): damage it on disk
    (stored / "model.pt").chmod(0o644)
    raw = (stored / "model.pt").read_bytes()
    (stored / "model.pt").write_bytes(raw[: len(raw) // 2] + b"\x00" * 64)
    assert not reg.verify_artifact(v.id)
    ok, reason = quality_gate(reg, v, 0.02)
    assert not ok and "checksum" in reason and reg.get(v.id).status == "rejected"
    with pytest.raises(ArtifactError):
        load_user_encoder(stored)


def test_mismatched_or_unsafe_artifact_is_refused(artifact, tmp_path):
    model, out = artifact
    state = model.state_dict()
    state["emb.item.weight"] = torch.zeros(3, model.cfg.dim)
    torch.save(state, out / "model.pt")
    with pytest.raises(ArtifactError, match="shape"):
        load_user_encoder(out)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"x": Evil()}, out / "model.pt")
    with pytest.raises(ArtifactError):  # weights_only=True refuses to unpickle objects
        load_user_encoder(out)
