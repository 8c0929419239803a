"""Bundle builder, index choice, validation and the publish/rollback pointer (no HTTP)."""
from __future__ import annotations

import hashlib
import io
import json
import os

import numpy as np
import pytest

from sassflow.contracts.artifacts import BundleLayout, ModelArtifact, ScenarioItems
from serving.bundle import (
    BundleError, build_bundle, build_synthetic_bundle, current_bundle_id, list_bundles, load_bundle,
    publish_bundle, read_history, read_manifest, read_pointer, rollback_bundle, verify_bundle, write_bundle,
)
from serving.bundle_reader import smoke_rows
from serving.feature_reader import StaticFeatureReader
from serving.service import RecommendationService
from serving.index import build_index, configure_search, index_spec, recall_at_k, write_index
from serving.synthetic import synthetic_catalog, synthetic_users
from tests.serving.conftest import drop, edit_manifest, put, serving_settings, tamper, write_pointer


def corrupt(path):
    """Flip bytes in the middle of a (read-only) bundle file, keeping its size."""
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid : mid + 8] = bytes(b ^ 0xFF for b in data[mid : mid + 8])
    path.write_bytes(bytes(data))


def test_index_choice_follows_settings(tmp_path):
    sv = serving_settings(tmp_path, exact_index_max_items=1000, ivf_nprobe=7, hnsw_ef_search=99,
                          ann_backend="faiss").serving
    assert index_spec(1000, sv) == {"type": "flat"}
    ivf = index_spec(100_000, sv)
    assert ivf["type"] == "ivf" and ivf["nlist"] == int(4 * 100_000**0.5) and ivf["nprobe"] == 7
    hnsw = index_spec(100_000, sv.model_copy(update={"ann_index": "hnsw"}))
    assert hnsw == {"type": "hnsw", "m": sv.hnsw_m, "ef_construction": sv.hnsw_ef_construction, "ef_search": 99}


@pytest.mark.parametrize("ann", ["ivf", "hnsw"])
def test_approximate_index_recall_against_exact(tmp_path, ann):
    sv = serving_settings(tmp_path, exact_index_max_items=1000, ann_index=ann, ann_backend="faiss").serving
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
    assert current_bundle_id(settings) == c and read_history(settings) == [a, b, c]
    assert [x["bundle_id"] for x in list_bundles(settings) if x["current"]] == [c]
    corrupt(settings.serving.bundle_dir / b / "family" / "item_ids.npy")
    assert rollback_bundle(settings).bundle_id == a  # b no longer validates: skipped, and dropped
    assert current_bundle_id(settings) == a and read_history(settings) == [a]
    with pytest.raises(BundleError, match="no earlier published bundle validates"):
        rollback_bundle(settings)
    assert current_bundle_id(settings) == a
    with pytest.raises(BundleError):
        publish_bundle(settings, "no-such-bundle")


def test_publish_refuses_what_a_service_would_refuse(tmp_path):
    """Refused bundles never enter HISTORY: publish runs the service's own checks first."""
    settings = serving_settings(tmp_path)
    good = build_synthetic_bundle(settings, 3_000, 8, seed=1).name
    publish_bundle(settings, good)
    bad = build_synthetic_bundle(settings, 3_000, 8, seed=2)
    corrupt(bad / "drama" / "index.faiss")
    partial = build_synthetic_bundle(settings, 3_000, 8, scenarios=["drama"], seed=3)
    for bundle, reason in ((bad, "checksum mismatch on drama/index.faiss"), (partial, "no index for scenario")):
        with pytest.raises(BundleError, match=reason):
            publish_bundle(settings, bundle.name)
        assert current_bundle_id(settings) == good and read_history(settings) == [good]


@pytest.mark.parametrize("make_id", [
    lambda outside: "../outside/" + outside.name,  # a path up and out
    lambda outside: str(outside),  # an absolute path
    lambda outside: ".hidden",  # not a plain id (the builder's temp folders are hidden)
    lambda outside: "link-to-outside",  # a symlink in the bundle dir to a bundle elsewhere
])
def test_publish_accepts_only_bundles_inside_the_bundle_dir(tmp_path, make_id):
    settings = serving_settings(tmp_path / "in")
    good = build_synthetic_bundle(settings, 3_000, 8, seed=1).name
    publish_bundle(settings, good)
    elsewhere = serving_settings(tmp_path / "outside")  # a complete, valid bundle, outside
    outside = build_synthetic_bundle(elsewhere, 3_000, 8, seed=2)
    (settings.serving.bundle_dir / "link-to-outside").symlink_to(outside, target_is_directory=True)
    (settings.serving.bundle_dir / ".hidden").mkdir()
    with pytest.raises(BundleError) as info:
        publish_bundle(settings, make_id(outside))
    assert str(tmp_path) not in str(info.value)
    assert current_bundle_id(settings) == good and read_history(settings) == [good]


@pytest.mark.parametrize("raw, problem", [
    (b"/etc\n", "does not hold a bundle id"),
    (b"../../outside/X\n", "does not hold a bundle id"),
    (b"\xff\xfe\x00\x01", "does not hold a bundle id"),
    (b"a" * 10_000, "does not hold a bundle id"),
    (b"\n", None),  # empty: nothing published
])
def test_pointer_names_a_plain_bundle_id_or_nothing(tmp_path, raw, problem):
    settings = serving_settings(tmp_path)
    write_pointer(settings, raw)
    pointer = read_pointer(settings)
    assert pointer.bundle_id is None and current_bundle_id(settings) is None
    assert (pointer.problem is None) if problem is None else (problem in pointer.problem)
    assert problem is None or raw.decode("latin-1")[:20] not in pointer.problem  # no echo


def _outside_file(tmp_path, exists: bool):
    path = tmp_path / "secret.txt"
    if exists:
        path.write_bytes(b"top secret")
    return path


@pytest.mark.parametrize("attack", ["dotdot", "absolute", "symlink_file", "symlink_dir", "extra_file", "fifo"])
def test_manifest_paths_are_confined_to_the_bundle(tmp_path, attack):
    """Nothing outside the bundle is ever read, and the refusal is the same whether the outside file
    exists or not (no file-existence oracle), without filesystem paths."""
    settings = serving_settings(tmp_path / "state")
    bundle = build_synthetic_bundle(settings, 3_000, 8, seed=1)
    secret = tmp_path / "secret.txt"
    entry = {"sha256": hashlib.sha256(b"top secret").hexdigest(), "bytes": 10}
    if attack == "dotdot":
        rel = os.path.relpath(secret, bundle)
        edit_manifest(bundle, lambda m: put(m, ("files", rel), entry))
    elif attack == "absolute":
        edit_manifest(bundle, lambda m: put(m, ("files", str(secret)), entry))
    elif attack == "symlink_file":
        os.chmod(bundle / "drama", 0o755)
        (bundle / "drama" / "extra.bin").symlink_to(secret)
        edit_manifest(bundle, lambda m: put(m, ("files", "drama/extra.bin"), entry))
    elif attack == "symlink_dir":
        (bundle / "more").symlink_to(tmp_path, target_is_directory=True)
        edit_manifest(bundle, lambda m: put(m, ("files", "more/secret.txt"), entry))
    elif attack == "extra_file":
        os.chmod(bundle / "drama", 0o755)
        (bundle / "drama" / "unlisted.bin").write_bytes(b"x")
    else:
        os.chmod(bundle / "drama", 0o755)
        os.mkfifo(bundle / "drama" / "pipe")  # would block a reader that opened it
    reasons = []
    for exists in (False, True):
        if exists:
            secret.write_bytes(b"top secret")
        with pytest.raises(BundleError) as info:
            load_bundle(bundle, settings)
        reasons.append(str(info.value))
    assert reasons[0] == reasons[1] and str(tmp_path) not in reasons[0]
    expected = {"dotdot": "is not a plain relative name", "absolute": "is not a plain relative name",
                "symlink_file": "drama/extra.bin is a symbolic link", "symlink_dir": "more is a symbolic link",
                "extra_file": "files not in the manifest", "fifo": "drama/pipe is not a regular file"}[attack]
    assert expected in reasons[0], reasons[0]


@pytest.mark.parametrize("change, expected", [
    (lambda m: [], "invalid manifest.json"),
    (lambda m: drop(m, ("scenarios", "drama", "count")), "scenarios.drama.count: Field required"),
    (lambda m: put(m, ("files", "drama/index.faiss"), "abc"), "files.drama/index.faiss"),
    (lambda m: put(m, ("scenarios", "drama", "count"), "600"), "scenarios.drama.count"),
    (lambda m: put(m, ("scenarios", "drama", "index"), {"type": "ivf"}), "scenarios.drama.index.ivf.nlist"),
    (lambda m: put(m, ("bundle_id",), "another"), "names another bundle"),
    (lambda m: put(m, ("format",), 2), "format"),
    (lambda m: drop(m, ("files", "drama/popular.npy")), "files: no entry for drama/popular.npy"),
    (lambda m: put(m, ("surprise",), 1), "surprise: Extra inputs are not permitted"),
    (lambda m: put(m, ("kind",), "sass"), "the tower's kind does not match"),
    (lambda m: put(m, ("scenarios", "../x"), m["scenarios"]["drama"]), "scenarios.../x: is not a plain relative name"),
])
def test_malformed_manifests_are_refused_with_a_reason(tmp_path, change, expected):
    settings = serving_settings(tmp_path)
    bundle = build_synthetic_bundle(settings, 3_000, 8, seed=1)
    edit_manifest(bundle, change)
    with pytest.raises(BundleError) as info:
        load_bundle(bundle, settings)
    assert expected in str(info.value) and str(tmp_path) not in str(info.value)


def test_binary_and_oversized_manifests_are_refused(tmp_path):
    settings = serving_settings(tmp_path)
    bundle = build_synthetic_bundle(settings, 3_000, 8, seed=1)
    os.chmod(bundle / "manifest.json", 0o644)
    (bundle / "manifest.json").write_bytes(b"\xff\xfe" + os.urandom(64))
    with pytest.raises(BundleError, match="invalid manifest.json"):
        load_bundle(bundle, settings)
    (bundle / "manifest.json").write_bytes(b" " * (BundleLayout.MAX_MANIFEST_BYTES + 1))
    with pytest.raises(BundleError, match="larger than"):
        load_bundle(bundle, settings)


def test_nonfinite_item_vectors_are_refused(tmp_path):
    settings = serving_settings(tmp_path)
    bundle = build_synthetic_bundle(settings, 3_000, 8, seed=1)
    sc = synthetic_catalog(3_000, 8, settings.scenarios, seed=1)["comedy"]
    vectors = sc.vectors.copy()
    vectors[17] = np.nan
    spec = read_manifest(bundle)["scenarios"]["comedy"]["index"]
    index_file = tmp_path / "nan.faiss"
    write_index(build_index(vectors, spec), index_file)
    tamper(bundle, "comedy/index.faiss", index_file.read_bytes())  # checksums all match
    with pytest.raises(BundleError, match="comedy has non-finite item vectors"):
        load_bundle(bundle, settings)
    with pytest.raises(BundleError, match="NaN or inf"):  # and the builder never writes one
        write_bundle(settings, 1, {"kind": "mean_history", "dim": 8}, {},
                     {"comedy": ScenarioItems(sc.item_ids, vectors, sc.popular)})
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
    # The smoke query asks for real users: ids of the tower's vocabulary, with a click history.
    rows = smoke_rows(loaded.tower, loaded.catalogs["drama"])
    assert {r["user_id"] for r in rows} <= set(range(1, n_users + 1)) and len({r["user_id"] for r in rows}) > 1
    assert all(r["recent_clicks"] for r in rows)
    # NaN rows in the user embedding, checksums matching: refused at load, never served.
    state = torch.load(path / "tower" / "model.pt", weights_only=True)
    state["emb.user.weight"][5:9] = float("nan")
    nan_bundle = build_bundle(settings, tmp_path / "sass", 2, publish=False)
    buf = io.BytesIO()
    torch.save(state, buf)
    tamper(nan_bundle, "tower/model.pt", buf.getvalue())
    with pytest.raises(BundleError, match=r"non-finite weights in \['emb.user.weight'\]"):
        load_bundle(nan_bundle, settings)
    # A NaN in a user's online features (the tower then gives a NaN vector): the flagged popular
    # fallback, never an empty personal answer.
    service = RecommendationService(settings, StaticFeatureReader({(3, "comedy"): {
        "recent_clicks": [1004, 1009], "scenario_click_share": [float("nan")] * len(S)}}))
    assert service.swap_to(path.name)["status"] == "swapped"
    assert not np.isfinite(loaded.tower.encode([{"user_id": 3, "recent_clicks": [1004, 1009],
                                                 "scenario_click_share": [float("nan")] * len(S)}], "comedy")).all()
    rec = service.recommend(3, "comedy", 5)
    assert rec.fallback is True and len(rec.items) == 5
    # A damaged tower is refused like a damaged index.
    corrupt(path / "tower" / "model.pt")
    with pytest.raises(BundleError, match="checksum mismatch on tower/model.pt"):
        load_bundle(path, settings)
