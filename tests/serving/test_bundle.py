"""Bundle builder, index choice, validation and the publish/rollback pointer (no HTTP)."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from sassflow.contracts.artifacts import ModelArtifact, ScenarioItems
from serving.bundle import (
    BundleError, build_bundle, build_synthetic_bundle, current_bundle_id, list_bundles, load_bundle,
    publish_bundle, read_manifest, rollback_bundle, verify_bundle,
)
from serving.index import build_index, configure_search, index_spec, recall_at_k
from serving.synthetic import synthetic_catalog, synthetic_users
from tests.serving.conftest import serving_settings


def corrupt(path):
    """Flip bytes in the middle of a (read-only) bundle file, keeping its size."""
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid : mid + 8] = bytes(b ^ 0xFF for b in data[mid : mid + 8])
    path.write_bytes(bytes(data))


def test_index_choice_follows_settings(tmp_path):
    sv = serving_settings(tmp_path, exact_index_max_items=1000, ivf_nprobe=7, hnsw_ef_search=99).serving
    assert index_spec(1000, sv) == {"type": "flat"}
    ivf = index_spec(100_000, sv)
    assert ivf["type"] == "ivf" and ivf["nlist"] == int(4 * 100_000**0.5) and ivf["nprobe"] == 7
    hnsw = index_spec(100_000, sv.model_copy(update={"ann_index": "hnsw"}))
    assert hnsw == {"type": "hnsw", "m": sv.hnsw_m, "ef_construction": sv.hnsw_ef_construction, "ef_search": 99}


@pytest.mark.parametrize("ann", ["ivf", "hnsw"])
def test_approximate_index_recall_against_exact(tmp_path, ann):
    sv = serving_settings(tmp_path, exact_index_max_items=1000, ann_index=ann).serving
    sc = synthetic_catalog(20_000, 32, ["s"], seed=3)["s"]
    users = synthetic_users({"s": sc}, 200, seed=3)
    queries = []
    for clicks in users.values():
        v = sc.vectors[np.searchsorted(sc.item_ids, clicks)].mean(axis=0)
        queries.append(v / np.linalg.norm(v))
    queries = np.asarray(queries, dtype=np.float32)
    spec = index_spec(len(sc.item_ids), sv)
    approx = configure_search(build_index(sc.vectors, spec), spec)
    exact = build_index(sc.vectors, {"type": "flat"})
    recall = recall_at_k(approx.search(queries, 100)[1], exact.search(queries, 100)[1])
    assert recall >= 0.95, (spec, recall)


def test_bundle_is_complete_checksummed_and_immutable(tmp_path):
    settings = serving_settings(tmp_path)
    path = build_synthetic_bundle(settings, 6_000, 16, seed=5, model_version=42)
    m = read_manifest(path)
    assert m["bundle_id"] == path.name and m["model_version"] == 42 and m["kind"] == "mean_history"
    assert set(m["scenarios"]) == set(settings.scenarios) and m["dim"] == 16
    assert sum(s["count"] for s in m["scenarios"].values()) == 6_000
    assert all(s["index"]["type"] == "ivf" for s in m["scenarios"].values())  # 1,200 > 1,000 per scenario
    for scenario in settings.scenarios:
        for name in ("index.faiss", "item_ids.npy", "popular.npy"):
            assert len(m["files"][f"{scenario}/{name}"]["sha256"]) == 64
            assert (path / scenario / name).stat().st_mode & 0o222 == 0
    assert "tower/config.json" in m["files"]
    assert verify_bundle(path, settings.scenarios) == m
    loaded = load_bundle(path, settings)
    assert {s: c.size for s, c in loaded.catalogs.items()} == {s: v["count"] for s, v in m["scenarios"].items()}
    # No temp folder is left behind, and a second build is a new bundle, never an overwrite.
    again = build_synthetic_bundle(settings, 6_000, 16, seed=5, model_version=42)
    assert again != path and path.exists() and again.exists()
    assert not list(settings.serving.bundle_dir.glob(".building-*"))


def test_corrupt_or_mismatched_bundle_is_refused(tmp_path):
    settings = serving_settings(tmp_path)
    path = build_synthetic_bundle(settings, 6_000, 16, seed=6)
    corrupt(path / "drama" / "index.faiss")
    with pytest.raises(BundleError, match="checksum mismatch on drama/index.faiss"):
        load_bundle(path, settings)
    partial = build_synthetic_bundle(settings, 6_000, 16, scenarios=["drama", "comedy"], seed=6)
    with pytest.raises(BundleError, match="no index for scenario"):
        load_bundle(partial, settings)
    os.chmod(partial / "manifest.json", 0o644)
    m = json.loads((partial / "manifest.json").read_text())
    m["scenarios"]["drama"]["count"] += 1  # manifest disagrees with the index
    (partial / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="manifest says"):
        load_bundle(partial, settings.model_copy(update={"scenarios": ["drama", "comedy"]}))


def test_publish_and_rollback_walk_the_history(tmp_path):
    settings = serving_settings(tmp_path)
    a, b, c = (build_synthetic_bundle(settings, 3_000, 8, seed=s).name for s in (1, 2, 3))
    assert current_bundle_id(settings) is None
    for bundle_id in (a, b, c):
        publish_bundle(settings, bundle_id)
    assert current_bundle_id(settings) == c
    assert [x["bundle_id"] for x in list_bundles(settings) if x["current"]] == [c]
    corrupt(settings.serving.bundle_dir / b / "family" / "item_ids.npy")
    assert rollback_bundle(settings) == a  # b no longer verifies: skipped
    with pytest.raises(BundleError, match="no previous good bundle"):
        rollback_bundle(settings)
    assert current_bundle_id(settings) == a
    with pytest.raises(BundleError):
        publish_bundle(settings, "no-such-bundle")


def write_artifact(folder, catalog, kind="mean_history", dim=16):
    """A model artifact in the contract's layout."""
    artifact = ModelArtifact(folder)
    artifact.write_config({"kind": kind, "dim": dim})
    artifact.write_vocab(np.arange(1, 11, dtype=np.int64), np.concatenate([c.item_ids for c in catalog.values()]))
    artifact.state_path.write_bytes(b"")
    for s, c in catalog.items():
        artifact.write_scenario(s, ScenarioItems(c.item_ids, c.vectors, c.popular))


def test_build_from_artifact_publishes_it(tmp_path):
    settings = serving_settings(tmp_path)
    catalog = synthetic_catalog(4_000, 16, settings.scenarios, seed=9)
    write_artifact(tmp_path / "model-7", catalog)
    path = build_bundle(settings, tmp_path / "model-7", 7)
    assert current_bundle_id(settings) == path.name
    tower = sorted(p.name for p in (path / "tower").iterdir())
    assert tower == sorted(ModelArtifact.TOWER_FILES)  # the tower's files only, no catalog arrays
    loaded = load_bundle(path, settings)
    users = synthetic_users(catalog, 5, seed=9)
    row = {"user_id": 1, "recent_clicks": users[(1, "drama")]}
    vec = loaded.tower.encode([row], "drama")
    scores, ids = loaded.catalogs["drama"].search(vec, 10)
    expected = catalog["drama"].vectors @ vec[0]
    assert scores[0, 0] == pytest.approx(expected.max(), rel=1e-4)
    assert ids[0, 0] == catalog["drama"].item_ids[expected.argmax()]


def test_bundle_from_a_real_sass_artifact(tmp_path):
    import torch

    from serving.towers import load_sass_tower
    from training import export
    from training.model import SASS, ModelConfig

    settings = serving_settings(tmp_path, exact_index_max_items=50)
    S, n_users, n_items = settings.scenarios, 40, 400
    torch.manual_seed(0)
    model = SASS(ModelConfig(n_users=n_users, n_items=n_items, n_scenarios=len(S), dim=16, hidden_dims=[32, 16]))
    item_ids = np.arange(1000, 1000 + n_items, dtype=np.int64)
    catalogs = [np.arange(1 + k, n_items + 1, len(S)) for k in range(len(S))]  # vocabulary indices
    clicks = np.random.default_rng(0).poisson(2.0, (len(S), n_items + 1)).astype(float)
    export.export_artifacts(model, tmp_path / "sass", scenarios=S, user_ids=np.arange(1, n_users + 1),
                            item_ids=item_ids, catalogs=catalogs, item_clicks=clicks)
    path = build_bundle(settings, tmp_path / "sass", 1)
    loaded = load_bundle(path, settings)
    assert loaded.manifest["kind"] == "sass" and loaded.catalogs["drama"].spec["type"] == "ivf"
    # The bundle's tower is training's encoder and the index ranks exactly like the exported vectors.
    row = {"user_id": 3, "recent_clicks": [1004, 1009], "recent_clicks_all": [1004, 1009, 1001],
           "scenario_click_share": [0.2] * len(S)}
    vec = loaded.tower.encode([row], "comedy")
    reference = load_sass_tower(tmp_path / "sass").encode([row], "comedy")
    np.testing.assert_allclose(vec, reference, rtol=1e-5)
    comedy = ModelArtifact(tmp_path / "sass").read_scenario("comedy")
    vectors, ids = comedy.vectors, comedy.item_ids
    scores, found = loaded.catalogs["comedy"].search(vec, 5)
    assert found[0].tolist() == ids[np.argsort(-(vectors @ vec[0]))[:5]].tolist()
    # A damaged tower is refused like a damaged index.
    corrupt(path / "tower" / "model.pt")
    with pytest.raises(BundleError, match="checksum mismatch on tower/model.pt"):
        load_bundle(path, settings)
