"""`bench quality`'s recall branches: no structure sees a validation or test event, and the JSON
carries the BENCHMARKS.md keys; `bench ann` and the open-loop `bench serve --rate` contracts."""
from __future__ import annotations

import json

import numpy as np

from cli.bench.recall_quality import dataset_params, train_structures
from cli.main import build_parser
from sassflow.contracts.recall import BRANCHES
from sassflow.datasets import Dataset
from tests.training.test_cli import tiny_data  # noqa: F401 -- the fixture
from training.data import TRAIN, prepare, split_by_user_time


def test_structures_see_only_train_clicks(tiny_data, settings):  # noqa: F811
    dataset = Dataset(tiny_data, scenarios=settings.scenarios)
    events = dataset.load_events()
    ev = events[events["scenario"].isin(settings.scenarios)].reset_index(drop=True)
    split = split_by_user_time(ev)
    clicks = ev["event_type"] == "click"
    late = ev[clicks & (split != TRAIN)]
    # items clicked outside the train split only, moved to ids no train event has
    fresh = {i: 10_000 + n for n, i in enumerate(sorted(set(late["item_id"])))}
    events.loc[late.index, "item_id"] = late["item_id"].map(fresh).to_numpy()
    data = prepare(events, settings.scenarios)
    rows, train_clicks = train_structures(data, events, dataset.item_tags(), dataset_params(settings))
    assert len(train_clicks) == int((clicks & (split == TRAIN)).sum())
    seen = {int(i) for r in rows.values() for i in r.items} | {int(k.split("|")[1]) for k in rows if k.startswith("i2i")}
    assert seen and not seen & set(fresh.values())


def test_bench_quality_reports_branches(tiny_data, settings, capsys):  # noqa: F811
    args = build_parser().parse_args(["bench", "quality", "--data", str(tiny_data), "--seeds", "1",
                                      "--models", "sass,pop", "--epochs", "1"])
    assert args.func(args, settings) == 0
    q = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    b = q["branches"]
    assert {"sass", "i2i", "tags", "trending", "merged"} <= set(b)
    for name in ("sass", "i2i", "tags", "trending", "merged"):
        r = b[name]
        for K in (50, 200, 500):
            assert set(r[f"recall@{K}"]) == {"0", "1", "2", "3", "4", "mean"}
        assert 0 <= r["recall@50"]["mean"] <= r["recall@200"]["mean"] <= r["recall@500"]["mean"] <= 1
        assert ("unique_hit_share" in r) == (name != "merged")
    shares = sum(b[n]["unique_hit_share"]["mean"] for n in ("sass", "i2i", "tags", "trending"))
    assert 0 <= shares <= 1
    assert b["merge"]["chosen_on"] == "val" and b["merge"]["strategy"] in ("quota", "rrf")
    # the chosen merge is the validation's best of the grid, rrf_k included
    best = max(b["merge"]["tried"], key=lambda t: t["val_mean_recall"])
    assert {k: best[k] for k in ("strategy", "weights", "rrf_k")} == {k: b["merge"][k] for k in ("strategy", "weights", "rrf_k")}
    assert {t["rrf_k"] for t in b["merge"]["tried"]} == {20.0, 60.0}
    assert set(b["checks"]) >= {"merged_vs_sass_ratio", "merged_at_50_beats_every_model_in_every_scenario",
                                "every_branch_has_unique_hits"}


def test_bench_ann_prints_a_row_per_backend(settings, capsys):
    args = build_parser().parse_args(["bench", "ann", "--items", "3000", "--dim", "16", "--queries", "50",
                                      "--duration", "0.5", "--concurrency", "4"])
    assert args.func(args, settings) == 0
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [row["name"] for row in r["backends"]] == ["faiss-ivf", "faiss-hnsw", "hnswlib-hnsw"]
    for row in r["backends"]:
        assert {"build_s", "index_mb", "load_s", "recall_at_100", "p50_ms", "p99_ms", "swap_peak_rss_mb"} <= set(row)
        assert row["recall_at_100"] > 0.9 and row["swap_peak_rss_mb"] >= row["rss_mb"] > 0
    assert r["default"] in {row["name"] for row in r["backends"]} and r["items"] == 3000
    assert np.isfinite([row["p99_ms"] for row in r["backends"]]).all()


def test_bench_serve_open_loop_keeps_the_schedule_and_reports_stages(settings, capsys):
    args = build_parser().parse_args(["bench", "serve", "--items", "5000", "--dim", "16", "--users", "100",
                                      "--duration", "3", "--rate", "40", "--k", "10"])
    assert args.func(args, settings) == 0
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert r["mode"] == "open" and r["offered_qps"] == 40 and r["errors"] == 0
    assert r["sent"] == 200  # (2 s warm-up + 3 s) x 40/s, sent on schedule whatever the latency
    assert 30 <= r["qps"] <= 41 and r["requests"] == 120
    assert 0 < r["p50_ms"] <= r["p99_ms"]  # from the due time: never before the request was due
    assert r["branches"] == list(BRANCHES) and r["ranking"] is False and r["candidates"] == 10
    assert set(BRANCHES) | {"merge", "request"} <= set(r["stage_p99_ms"])
    assert r["recall_structures"]["rows"] > 0
