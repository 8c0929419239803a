"""The ranking stage in serving: a bundle's rankers load, rank the recalled candidates, are
independent of the other candidates, can be turned off per request, are timed per stage, and travel
with their bundle (swap and rollback change recall and ranking together)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from serving.bundle import BundleError, build_synthetic_bundle, load_bundle, publish_bundle, rollback_bundle
from serving.feature_reader import StaticFeatureReader
from serving.metrics import metric_value
from serving.ranking import ItemFeatureCache, RankingStage, SimpleCandidates
from serving.service import RecommendationService
from serving.synthetic import synthetic_catalog, synthetic_rankers, synthetic_users
from tests.serving.conftest import serving_settings

SCENARIOS = ["family", "thriller", "action", "comedy", "drama"]
ITEMS, DIM = 3000, 16


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("ranking")
    settings = serving_settings(root / "state")
    settings = settings.model_copy(update={"ranking": settings.ranking.model_copy(update={
        "candidates": 200, "coarse_keep": 50})})
    catalog = synthetic_catalog(ITEMS, DIM, SCENARIOS, seed=0)
    rankers = synthetic_rankers(root / "rankers", catalog, seed=0).root
    ranked = build_synthetic_bundle(settings, ITEMS, DIM, catalog=catalog, ranker_dir=rankers, model_version="r")
    plain = build_synthetic_bundle(settings, ITEMS, DIM, catalog=catalog, model_version="p")
    users = synthetic_users(catalog, 50, seed=0)
    reader = StaticFeatureReader({k: {"recent_clicks": v, "recent_clicks_all": v} for k, v in users.items()})
    return settings, ranked, plain, users, reader


def test_the_manifest_says_whether_the_bundle_ranks(setup):
    settings, ranked, plain, _, _ = setup
    m = json.loads((ranked / "manifest.json").read_text())
    assert m["ranking"]["included"] and m["ranking"]["fine"] and "ranking/fine.pt" in m["files"]
    assert json.loads((plain / "manifest.json").read_text())["ranking"] is None
    assert load_bundle(ranked, settings).rankers is not None
    assert load_bundle(plain, settings).rankers is None


def test_ranked_answers_come_from_the_recalled_candidates_and_ranking_false_is_the_recall_order(setup):
    settings, ranked, _, users, reader = setup
    service = RecommendationService(settings, reader)
    service.bundle = load_bundle(ranked, settings)
    (user, scenario), _ = next(iter(users.items()))
    on = service.recommend(user, scenario, 10)
    off = service.recommend(user, scenario, 10, ranking=False)
    recalled = service.recommend(user, scenario, settings.ranking.candidates, ranking=False)
    assert on.ranked and not off.ranked and len(on.items) == 10
    assert set(on.items) <= set(recalled.items) and off.items == recalled.items[:10]
    assert on.items != off.items  # the rankers reorder (untrained, but not the recall order)
    text = __import__("prometheus_client").generate_latest(service.metrics.registry).decode()
    for stage in ("features", "recall", "item_features", "coarse", "fine"):
        assert metric_value(text, f'sassflow_recommend_stage_seconds_count{{stage="{stage}"}}') >= 1, stage


def test_a_candidate_score_does_not_depend_on_the_other_candidates(setup):
    settings, ranked, _, users, reader = setup
    bundle = load_bundle(ranked, settings)
    bundle.rankers.coarse_keep = 10_000  # every candidate reaches the fine ranker
    stage = RankingStage(ItemFeatureCache(reader, 1.0), SCENARIOS)
    (user, scenario), clicks = next(iter(users.items()))
    row = reader.read([(user, scenario)])[0]
    items = bundle.catalogs[scenario].item_ids[:120].tolist()
    full = stage.rank(bundle, bundle.rankers, scenario, [row], [SimpleCandidates(items, "sass")], [len(items)])[0]
    score = dict(zip(full.items, full.scores))
    rng = np.random.default_rng(0)
    subset = [items[j] for j in rng.permutation(len(items))[:37]]
    part = stage.rank(bundle, bundle.rankers, scenario, [row, row],
                      [SimpleCandidates(subset, "sass"), SimpleCandidates(items[::-1], "sass")], [37, len(items)])
    for answer in part:
        np.testing.assert_allclose([score[i] for i in answer.items], answer.scores, rtol=1e-5, atol=1e-6)


def test_rankers_with_nan_weights_are_refused(setup, tmp_path):
    settings, _, _, _, _ = setup
    catalog = synthetic_catalog(ITEMS, DIM, SCENARIOS, seed=0)
    art = synthetic_rankers(tmp_path / "bad", catalog, seed=1)
    state = torch.load(art.root / "fine.pt", weights_only=True)
    next(v for v in state.values() if v.is_floating_point()).fill_(float("nan"))
    torch.save(state, art.root / "fine.pt")
    path = build_synthetic_bundle(settings, ITEMS, DIM, catalog=catalog, ranker_dir=art.root, model_version="bad")
    with pytest.raises(BundleError, match="non-finite"):
        load_bundle(path, settings)


def test_rollback_restores_recall_and_ranking_together(setup):
    settings, ranked, plain, _, _ = setup
    publish_bundle(settings, ranked.name)
    publish_bundle(settings, plain.name)
    back = rollback_bundle(settings)
    assert back.bundle_id == ranked.name and back.rankers is not None


def test_the_ranking_parameter_is_strict(setup):
    from serving.schemas import ApiError, RequestModels, parse_batch, parse_query

    models = RequestModels(setup[0])
    base = [("user_id", "1"), ("scenario", "drama")]
    assert parse_query(models, base)["ranking"] is True
    assert parse_query(models, base + [("ranking", "false")])["ranking"] is False
    for bad in ("False", "0", "no", ""):
        with pytest.raises(ApiError) as err:
            parse_query(models, base + [("ranking", bad)])
        assert err.value.status == 422 and "true or false" in err.value.detail
    assert parse_batch(models, b'{"requests": [{"user_id": 1, "scenario": "drama", "ranking": false}]}')[0]["ranking"] is False
    with pytest.raises(ApiError):
        parse_batch(models, b'{"requests": [{"user_id": 1, "scenario": "drama", "ranking": "false"}]}')


def test_the_sass_branch_scores_are_the_recall_scores_the_stage_would_compute(setup):
    """Reusing the ANN branch's scores (no second tower pass) ranks exactly as computing them."""
    from serving.recall import AnnRecall

    settings, ranked, _, users, reader = setup
    bundle = load_bundle(ranked, settings)
    stage = RankingStage(ItemFeatureCache(reader, 1.0), SCENARIOS)
    (user, scenario), _ = next(iter(users.items()))
    row = reader.read([(user, scenario)])[0]
    found = AnnRecall().retrieve(bundle, scenario, [row], [150])[0]
    reused, computed = (stage.rank(bundle, bundle.rankers, scenario, [row], [c], [150])[0] for c in (
        SimpleCandidates(found.items, "sass", found.scores), SimpleCandidates(found.items, "sass")))
    assert reused.items == computed.items
    np.testing.assert_allclose(reused.scores, computed.scores, rtol=1e-4, atol=1e-5)


def test_rankers_trained_on_other_scenarios_are_refused(setup, tmp_path):
    settings, _, _, _, _ = setup
    catalog = synthetic_catalog(ITEMS, DIM, SCENARIOS, seed=0)
    art = synthetic_rankers(tmp_path / "other", catalog, seed=1)
    meta = json.loads((art.root / "config.json").read_text())
    meta["scenarios"] = SCENARIOS[::-1]  # the same names, another order: other embeddings
    (art.root / "config.json").write_text(json.dumps(meta))
    path = build_synthetic_bundle(settings, ITEMS, DIM, catalog=catalog, ranker_dir=art.root, model_version="o")
    with pytest.raises(BundleError, match="scenarios"):
        load_bundle(path, settings)
