"""The hnswlib backend behind the index interface: search quality against exact search, reconstruct,
and a whole bundle built, verified, loaded and queried with it."""
from __future__ import annotations

import numpy as np

from serving.bundle import build_synthetic_bundle, load_bundle, read_manifest
from serving.index import build_index, index_spec, read_index, recall_at_k, search, write_index
from serving.synthetic import synthetic_catalog
from tests.serving.conftest import serving_settings


def test_hnswlib_index_finds_what_exact_search_finds_and_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((5000, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    settings = serving_settings(tmp_path, ann_backend="hnswlib", exact_index_max_items=100)
    spec = index_spec(len(vectors), settings.serving)
    assert spec["backend"] == "hnswlib" and spec["type"] == "hnsw"
    index = build_index(vectors, spec, seed=1)
    queries = rng.standard_normal((200, 16)).astype(np.float32)
    exact = build_index(vectors, {"type": "flat"})
    scores, rows = search(index, queries, 50)
    assert recall_at_k(rows, search(exact, queries, 50)[1]) > 0.95
    np.testing.assert_allclose(scores[:, 0], np.einsum("bd,bd->b", queries, vectors[rows[:, 0]]), rtol=1e-4)
    assert np.all(np.diff(scores, axis=1) <= 1e-6)  # best first
    np.testing.assert_array_equal(index.reconstruct_batch(np.array([3, 7])), vectors[[3, 7]])
    write_index(index, tmp_path / "i.hnsw")
    loaded = read_index(tmp_path / "i.hnsw", spec, dim=16)
    assert loaded.ntotal == 5000 and loaded.d == 16
    np.testing.assert_array_equal(search(loaded, queries, 10)[1], search(index, queries, 10)[1])


def test_a_bundle_built_with_hnswlib_is_verified_loaded_and_served(tmp_path):
    settings = serving_settings(tmp_path, ann_backend="hnswlib", exact_index_max_items=500)
    path = build_synthetic_bundle(settings, 5000, 16, seed=3)
    manifest = read_manifest(path)
    assert {s["index"]["backend"] for s in manifest["scenarios"].values()} == {"hnswlib"}
    assert "drama/index.hnsw" in manifest["files"] and not (path / "drama" / "index.faiss").exists()
    bundle = load_bundle(path, settings)  # checksums, counts, the smoke query and warm-up per scenario
    catalog = synthetic_catalog(5000, 16, settings.scenarios, seed=3)["drama"]
    row = {"user_id": 1, "recent_clicks": catalog.item_ids[:3].tolist()}
    vec = bundle.tower.encode([row], "drama")  # the mean-history tower reads vectors back from hnswlib
    expected = catalog.vectors[:3].mean(0)
    np.testing.assert_allclose(vec[0], expected / np.linalg.norm(expected), rtol=1e-4, atol=1e-5)
    scores, ids = bundle.catalogs["drama"].search(vec, 10)
    assert set(ids[0]) <= set(catalog.item_ids.tolist()) and scores[0, 0] >= scores[0, -1]
