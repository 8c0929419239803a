"""`sassflow train --data`, `sassflow registry` and the training benchmarks through the real argument parser."""
import json

import numpy as np
import pandas as pd
import pytest

from cli.main import build_parser


def _tiny_movielens(folder, scenarios_src):
    rng = np.random.default_rng(0)
    folder.mkdir()
    genres = ["Animation", "Horror", "Western", "Comedy", "Drama"]
    pd.DataFrame({"item_id": np.arange(1, 101), "title": "m", "year": 1995,
                  "genres": [genres[i % 5] for i in range(100)]}).to_csv(folder / "movies.csv", index=False)
    n = 4000
    r = pd.DataFrame({"user_id": rng.integers(1, 81, n), "item_id": rng.integers(1, 101, n),
                      "rating": rng.integers(1, 6, n), "timestamp": 978300000 + np.sort(rng.integers(0, 10**6, n))})
    r.drop_duplicates(["user_id", "item_id"]).to_csv(folder / "ratings.csv.gz", index=False)
    pd.DataFrame({"user_id": np.arange(1, 81), "gender": "F", "age": 1, "occupation": 1, "zip": "0"}).to_csv(
        folder / "users.csv", index=False)
    (folder.parent / "scenarios.json").write_text(scenarios_src.read_text())


@pytest.fixture
def tiny_data(tmp_path):
    """A tiny MovieLens-format folder with the project's scenarios.json beside it."""
    from tests.training.test_data import _scenarios

    src = _scenarios(tmp_path)
    data = tmp_path / "ml" / "tiny"
    data.parent.mkdir()
    _tiny_movielens(data, src)
    return data


def test_train_then_registry_commands(tiny_data, settings, capsys):
    data = tiny_data
    parser = build_parser()
    args = parser.parse_args(["train", "--data", str(data), "--baselines", "pop,dssm_m"])
    assert args.func(args, settings) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    gate = out["registry"]
    assert 0 < out["val_recall@50"] <= 1
    # random ratings: whether the model beats popularity is up to chance, the gate's rule is not
    assert gate["promoted"] == (gate["candidate"] > gate["popularity"]) and gate["champion"] is None
    status = "promoted" if gate["promoted"] else "rejected"
    # the movies' content tower is in the registered artifact (its checksum covers it)
    from sassflow.contracts.artifacts import ModelArtifact

    assert out["content"]["content"] and out["content"]["catalogue_items"] == 100
    assert ModelArtifact(out["artifact_dir"]).has_content()
    args = parser.parse_args(["registry", "list"])
    assert args.func(args, settings) == 0
    assert status in capsys.readouterr().out
    args = parser.parse_args(["registry", "show", str(gate["version"])])
    assert args.func(args, settings) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["artifact_ok"] and shown["status"] == status and f"{gate['popularity']:.4f}" in shown["status_reason"]


def test_bench_train_and_quality_print_the_contract_keys(tiny_data, settings, capsys):
    data = tiny_data
    parser = build_parser()
    args = parser.parse_args(["bench", "train", "--data", str(data), "--repeats", "2"])
    assert args.func(args, settings) == 0
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert r["pretrain_s"] > 0 and r["finetune_s"] > 0 and r["baseline_two_tower_s"] > 0
    assert r["repeats"] == 2 and len(r["ratio_per_repeat"]) == 2
    assert abs(r["ratio"] - (r["pretrain_s"] + r["finetune_s"]) / r["baseline_two_tower_s"]) < 1e-9
    assert r["finetune_samples"] > 0 and r["samples_per_s"] > 0 and r["peak_rss_mb"] > 0
    args = parser.parse_args(["bench", "quality", "--data", str(data), "--seeds", "2", "--models", "sass,pop"])
    assert args.func(args, settings) == 0
    q = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert q["seeds"] == 2 and set(q["models"]) == {"sass", "pop"}
    for metrics in q["models"].values():
        assert set(metrics) == {"recall@20", "recall@50", "ndcg@20"}
        assert set(metrics["recall@50"]) == {"0", "1", "2", "3", "4", "mean"}
        assert 0 <= metrics["recall@20"]["mean"] <= metrics["recall@50"]["mean"] <= 1
    assert q["std_recall@50_mean"]["pop"] == 0.0  # popularity has no seed
    # the ranking figures (BENCHMARKS.md `ranking`): the same candidate sets for all four
    assert set(q["ranking"]) == {"fine", "coarse", "lambdarank", "recall_order"}
    for figures in q["ranking"].values():
        assert set(figures) == {"ndcg@10", "recall@10", "auc"}
        assert set(figures["ndcg@10"]) == {"0", "1", "2", "3", "4", "mean"}
        assert 0 <= figures["ndcg@10"]["mean"] <= 1 and 0 <= figures["recall@10"]["mean"] <= 1
    assert set(q["ranking_exposure"]) == {"with_negatives", "impressions_only"}
    assert q["ranking_exposure"]["with_negatives"] == q["ranking"]["fine"]
    assert q["ranking_detail"]["seeds"] == 2 and len(q["ranking_checks"]) == 4
