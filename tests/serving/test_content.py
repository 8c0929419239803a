"""New items in serving: the side index searched with the main one, the live catalogue across bundle
swaps, the content candidate source, and the whole path through Kafka and the HTTP service."""
from __future__ import annotations

import numpy as np
import pytest

from sassflow.contracts.artifacts import BundleLayout
from serving.content import ContentRecall, FreshItems, LiveCatalogue
from serving.index import ScenarioCatalog, build_index
from tests.conftest import make_settings

SCEN = ["family", "thriller", "action", "comedy", "drama"]


def _unit(v):
    v = np.asarray(v, np.float32)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def test_catalog_search_merges_the_side_index_by_score():
    main = _unit([[1, 0, 0], [0, 1, 0], [0.7, 0.7, 0]])
    catalog = ScenarioCatalog("drama", build_index(main, {"type": "flat"}), np.array([10, 11, 12]),
                              np.array([10]), {"type": "flat"})
    q = _unit([[1, 0.2, 0]])
    before = catalog.search(q, 2)
    catalog.fresh = FreshItems(np.array([99, 98]), _unit([[1, 0.1, 0], [0, 0, 1]]), np.zeros(2))
    scores, ids = catalog.search(q, 3)
    assert ids[0].tolist() == [99, 10, 12]  # the new item outranks every main item for this query
    assert np.all(np.diff(scores[0]) <= 0)
    catalog.fresh = None
    assert [a.tolist() for a in catalog.search(q, 2)] == [a.tolist() for a in before]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small SASS + content tower on the synthetic source (posters included), bundled."""
    from cli.bench.freshness import train_bundle

    state = tmp_path_factory.mktemp("content-serving")
    s = make_settings(state, training={"pretrain_epochs": 1, "finetune_epochs": 2, "batch_size": 256},
                      content={"epochs": 8}, serving={"exact_index_max_items": 100_000})
    bundle, items, recent = train_bundle(s, n_users=200, n_items=300, n_events=30_000)
    return s, bundle, items, recent


def _copy(item, new_id: int, scenario: str):
    return item.model_copy(update={"item_id": new_id, "event_id": f"new-{new_id}", "scenarios": [scenario]})


def test_live_catalogue_makes_new_items_searchable_and_hands_them_to_the_next_bundle(trained):
    from serving.bundle import load_bundle
    from training.content_model import load_content_tower

    s, path, items, _ = trained
    bundle = load_bundle(path, s)
    live = LiveCatalogue(s.scenarios)
    live.add(items[:5])  # no bundle attached yet: remembered
    assert live.attach(bundle) == 0 and all(c.fresh is None for c in bundle.catalogs.values())
    assert live.items == {}  # the bundle holds them: forgotten
    new = _copy(items[7], 5000, "comedy")
    assert live.add([new]) == 1
    comedy = bundle.catalogs["comedy"]
    assert comedy.fresh.item_ids.tolist() == [5000] and all(
        bundle.catalogs[x].fresh is None for x in s.scenarios if x != "comedy")
    vector = load_content_tower(BundleLayout(path).tower_dir).encode([new], "comedy")
    assert np.allclose(comedy.fresh.vectors, vector, atol=1e-6)
    _, ids = comedy.search(vector, 1)
    assert ids[0, 0] == 5000  # its own content vector finds it first
    # a later version of the same item replaces it; another bundle that lacks it keeps it searchable
    live.add([new.model_copy(update={"title": "Another Title Entirely"})])
    assert comedy.fresh.item_ids.tolist() == [5000] and list(live.items) == [5000]
    again = load_bundle(path, s)
    live.attach(again)
    assert again.catalogs["comedy"].fresh.item_ids.tolist() == [5000]


def test_content_recall_answers_users_who_clicked_new_items_by_their_vectors(trained):
    from serving.bundle import load_bundle

    s, path, items, _ = trained
    bundle = load_bundle(path, s)
    live = LiveCatalogue(s.scenarios)
    live.attach(bundle)
    a, b = _copy(items[3], 7001, "drama"), _copy(items[3], 7002, "drama")  # identical content
    live.add([a, b])
    source = ContentRecall()
    nobody, clicked_new, clicked_old = source.retrieve(
        bundle, "drama", [{"recent_clicks": None}, {"recent_clicks": [7001]}, {"recent_clicks": [3]}], [5, 5, 5])
    assert nobody is None
    assert clicked_new.items[0] == 7002 and 7001 not in clicked_new.items and clicked_new.source == "content"
    assert clicked_old is None  # only bundled items clicked: the SASS branch's user, not this one's


def test_bench_freshness_new_items_reach_recommend_answers(kafka, tmp_path):
    """The whole path: catalogue event on Kafka -> the service's consumer -> content tower -> side
    index -> a /recommend answer (the benchmark at a small size)."""
    from cli.bench.freshness import bench_freshness

    s = kafka.model_copy(deep=True)
    s.state_dir = tmp_path / "bench"
    s.training.finetune_epochs, s.content.epochs = 2, 8
    result = bench_freshness(s, trials=3, users=200, items=300, events=30_000, timeout_s=60.0)
    assert result["trials"] == 3 and result["missing"] == 0
    assert 0 < result["item_freshness_p50_s"] <= result["item_freshness_p99_s"]
