"""The multi-branch recall step: merge rules, branch + reason per item, branch selection, skipped
branches, and a streaming branch serving an item the bundle has never seen (service in-process,
real SQLite recall store; the HTTP parameter through the real service)."""
from __future__ import annotations

import time

import httpx
import pytest

from cli.local.server import ServerProcess
from features.recall_store import SqliteRecallStore
from sassflow.contracts.recall import write_item_tags
from sassflow.settings import MergeSettings
from serving.branches import items_outside_bundle
from serving.bundle import build_synthetic_bundle, publish_bundle
from serving.feature_reader import StaticFeatureReader, save_recent_clicks
from serving.merge import merge
from serving.recall import Candidates
from serving.service import RecommendationService
from streaming.aggregate import Ev
from streaming.recall_structures import RecallParams, RecallStructures
from tests.serving.conftest import DIM, N_ITEMS, serving_settings

HOUR_MS = 3_600_000
NOW_MS = int(time.time() * 1000)
T_MS = NOW_MS // HOUR_MS * HOUR_MS  # this hour's tile: every test click in one tile
NEW_ITEM = 10_000_000  # in no bundle: only the stream knows it
# quotas make each branch's share of a short list predictable (the default RRF lets a one-branch item
# in only past SASS's first 60)
QUOTAS = MergeSettings(strategy="quota", weights={"sass": 0.55, "i2i": 0.25, "tags": 0.1, "trending": 0.1})


def test_quota_merge_keeps_each_branch_share_at_every_cut_off():
    a = Candidates(list(range(0, 100)), [1.0] * 100, "sass")
    b = Candidates(list(range(1000, 1100)), [1.0] * 100, "i2i", [f"because you clicked {i}" for i in range(100)])
    m = merge([a, b], "quota", {"sass": 0.75, "i2i": 0.25}, 40)
    for n in (8, 20, 40):
        assert m.branches[:n].count("sass") == 3 * n // 4
    assert m.reasons[m.branches.index("i2i")] == "because you clicked 0"
    both = merge([a, Candidates([5, 2000], [9.0, 8.0], "trending")], "quota", {"sass": 0.5, "trending": 0.5}, 10)
    assert both.items.count(5) == 1 and both.branches[both.items.index(5)] == "trending"  # rank 1 there beats 6
    rrf = merge([a, Candidates([50, 3], [1.0, 1.0], "i2i")], "rrf", {"sass": 1.0, "i2i": 1.0}, 3)
    assert rrf.items == [3, 50, 0]  # in both lists beats first in one


def test_rrf_k_sets_how_much_a_branch_head_counts():
    # 1 is SASS's first; 4 is SASS's fourth and i2i's first
    lists = [Candidates([1, 2, 3, 4], [1.0] * 4, "sass"), Candidates([4], [1.0], "i2i")]
    weights = {"sass": 2.0, "i2i": 1.0}
    assert merge(lists, "rrf", weights, 2, rrf_k=60.0).items == [4, 1]  # flat: agreement wins
    assert merge(lists, "rrf", weights, 2, rrf_k=0.0).items == [1, 4]  # steep: the heavier branch's head wins


def _service(tmp_path, store=None, **recall):
    settings = serving_settings(tmp_path, admin_token=None)
    recall = {"branch_budget_ms": 5000.0, **recall}  # a loaded 2-core CI machine must not skip branches here
    settings.recall.merge = QUOTAS
    for k, v in recall.items():
        setattr(settings.recall, k, v)
    bundle = build_synthetic_bundle(settings, N_ITEMS, DIM, seed=1)
    publish_bundle(settings, bundle.name)
    clicked = [5, 10, 15]  # drama items of the synthetic catalog (the 5th scenario: ids 5, 10, 15...)
    reader = StaticFeatureReader({(1, "drama"): {"recent_clicks": clicked, "recent_clicks_all": clicked}})
    service = RecommendationService(settings, reader, recall_store=store or SqliteRecallStore(settings.recall.sqlite_path))
    assert service.reload()["status"] == "swapped"
    return service, settings


def _stream(settings, store, events):
    """The recall stage's pure half, writing to the real store (the stage's Kafka half: tests/streaming)."""
    structures = RecallStructures(RecallParams.from_settings(settings), {5: ("noir",), NEW_ITEM: ("noir",)})
    for e in events:
        structures.add(e)
    store.write(structures.take_rows())


def test_every_branch_answers_with_reasons_and_a_new_item_is_served_before_any_retrain(tmp_path):
    service, settings = _service(tmp_path)
    write_item_tags(settings.recall.catalog_dir, {5: ["noir"], NEW_ITEM: ["noir"]})
    store = SqliteRecallStore(settings.recall.sqlite_path)
    # 30 users click 5 then the brand-new item; 10 more click only the new item (today's top item)
    events = [e for u in range(100, 130) for e in (Ev(f"{u}-a", u, 5, "drama", True, T_MS + 1000),
                                                    Ev(f"{u}-b", u, NEW_ITEM, "drama", True, T_MS + 2000))]
    events += [Ev(f"{u}-b", u, NEW_ITEM, "drama", True, T_MS + 3000) for u in range(200, 210)]
    _stream(settings, store, events)
    rec = service.recommend(1, "drama", 40)
    assert {"sass", "i2i"} <= set(rec.branches) and not rec.fallback
    assert rec.reasons[rec.items.index(NEW_ITEM)] == "because you clicked 5"
    assert items_outside_bundle(service.bundle.path, "drama", rec.items) == [NEW_ITEM]
    assert not {5, 10, 15} & set(rec.items)  # clicked items are never recommended back
    assert len(rec.items) == len(rec.scores) == len(rec.branches) == len(rec.reasons) == 40
    sass_only = service.recommend(1, "drama", 40, branches=["sass"])
    assert NEW_ITEM not in sass_only.items and set(sass_only.branches) == {"sass"}
    only = service.recommend(1, "drama", 5, branches=["trending"])
    assert only.items == [NEW_ITEM] and only.branches == ["trending"] and only.reasons == ["trending in drama"]
    assert only.fallback  # nothing personal in it
    half_life_ms = settings.recall.half_life_ms  # the score is the click count decayed to the request time
    assert only.scores[0] == pytest.approx(40 * 2 ** (-(time.time() * 1000 - T_MS) / half_life_ms), rel=1e-4)
    tags = service.recommend(1, "drama", 5, branches=["tags"])
    assert tags.items == [NEW_ITEM] and tags.reasons == ["trending in noir"]  # the tag of 5, which is clicked
    cold = service.recommend(999, "drama", 5)  # no history: trending answers, flagged as the fallback
    assert cold.fallback and cold.items == [NEW_ITEM, 5] and cold.branches == ["trending"] * 2


class BrokenStore:
    def __init__(self, delay_s: float = 0.0):
        self.delay_s = delay_s

    def read(self, keys):
        if self.delay_s:
            time.sleep(self.delay_s)
            return [None] * len(keys)
        raise ConnectionError("store down")

    def write(self, rows):
        pass

    def keys(self):
        return []


@pytest.mark.parametrize("delay_s,reason", [(0.0, "error"), (0.5, "timeout")])
def test_a_failing_or_slow_branch_is_skipped_and_counted(tmp_path, delay_s, reason):
    service, _ = _service(tmp_path, store=BrokenStore(delay_s), branch_budget_ms=50.0)
    t0 = time.perf_counter()
    rec = service.recommend(1, "drama", 10)
    assert time.perf_counter() - t0 < 0.45 or reason == "error"  # the slow branches were not waited for
    assert set(rec.branches) == {"sass"} and len(rec.items) == 10 and not rec.fallback
    from prometheus_client import generate_latest

    text = generate_latest(service.metrics.registry).decode()
    for branch in ("i2i", "tags", "trending"):
        line = f'sassflow_recall_branch_skipped_total{{branch="{branch}",reason="{reason}"}} 1.0'
        assert line in text


def test_http_branches_parameter_and_per_item_reasons(tmp_path, users):
    settings = serving_settings(tmp_path)
    settings.recall.branch_budget_ms = 5000.0
    settings.recall.merge = QUOTAS
    publish_bundle(settings, build_synthetic_bundle(settings, N_ITEMS, DIM, seed=1).name)
    features = tmp_path / "features.npz"
    save_recent_clicks(features, settings.scenarios, users)
    (user, scenario), clicks = next(iter(users.items()))
    events = [e for u in range(500, 520) for e in (Ev(f"{u}-a", u, clicks[0], scenario, True, T_MS + 1000),
                                                    Ev(f"{u}-b", u, NEW_ITEM, scenario, True, T_MS + 2000))]
    _stream(settings, SqliteRecallStore(settings.recall.sqlite_path), events)
    with ServerProcess(settings, static_features=features, log_path=tmp_path / "server.log") as srv:
        srv.wait_ready()
        with httpx.Client(base_url=srv.url, timeout=30) as c:
            base = {"user_id": user, "scenario": scenario, "k": 10}
            body = c.get("/recommend", params=base).json()
            assert set(body["branches"]) >= {"sass", "i2i"} and len(body["reasons"]) == 10
            assert body["reasons"][body["items"].index(NEW_ITEM)] == f"because you clicked {clicks[0]}"
            body = c.get("/recommend", params={**base, "branches": "i2i,trending"}).json()
            assert set(body["branches"]) <= {"i2i", "trending"} and body["items"][0] == NEW_ITEM
            r = c.get("/recommend", params={**base, "branches": "sass,bogus"})
            assert r.status_code == 422 and "bogus" in r.json()["detail"]
            assert 'sassflow_recall_branch_seconds_count{branch="i2i"}' in c.get("/metrics").text
