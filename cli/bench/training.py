"""`sassflow bench train` and `sassflow bench quality` (keys: BENCHMARKS.md)."""
from __future__ import annotations

import resource
import sys
import time
from pathlib import Path

import numpy as np


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _data(settings, data_dir, scenarios_file=None):
    from sassflow.datasets import load_events
    from training.data import prepare

    data_dir = Path(data_dir)
    sf = Path(scenarios_file) if scenarios_file else settings.data.find_scenarios_file(data_dir)
    t0 = time.perf_counter()
    ev = load_events(data_dir, sf, settings.scenarios)
    data = prepare(ev, settings.scenarios)
    _log(f"loaded {len(ev)} events from {data_dir} and built features in {time.perf_counter() - t0:.1f}s")
    return data


# `bench train` compares the cost of the same work: this many stage-2 epochs for both models, early
# stopping off (with it on, each model would stop at its own epoch and the ratio would measure that).
BENCH_TRAIN_EPOCHS = 4


def _cfg(settings, seed: int, epochs: int | None, progress: bool, **over):
    from training.trainer import TrainConfig

    over = {"seed": seed, "progress": progress, **over}
    if epochs:
        over["finetune_epochs"] = epochs
    return TrainConfig.from_settings(settings.training, **over)


def bench_train(settings, data_dir, epochs: int | None = None, progress: bool = True, repeats: int = 2) -> dict:
    """Wall time of SASS's two stages against a plain two-tower on the same data and the same
    stage-2 epochs (``epochs``, default ``BENCH_TRAIN_EPOCHS``, early stopping off).

    The two alternate, ``repeats`` times each (two-tower, SASS, two-tower, SASS, ...), and the
    ratio is of the summed times, so a burst of load from elsewhere on a shared machine falls
    on both sides instead of on whichever happened to be running."""
    from training.baselines import fit
    from training.pipeline import set_threads

    set_threads(settings)
    data = _data(settings, data_dir)
    cfg = _cfg(settings, settings.training.seed, epochs or BENCH_TRAIN_EPOCHS, progress, patience=0)
    runs = []
    for r in range(max(1, repeats)):
        _log(f"[{r + 1}/{repeats}] plain two-tower (dssm_m) ...")
        base = fit("dssm_m", data, settings.training, cfg).history
        _log(f"[{r + 1}/{repeats}] sass: pre-training + fine-tuning ...")
        runs.append((base, fit("sass", data, settings.training, cfg).history))

    def total(which: int, stage: str, clock: str = "seconds") -> float:
        return sum(getattr(run[which], clock).get(stage, 0.0) for run in runs)

    n = len(runs)
    pre, fine, base_s = total(1, "pretrain"), total(1, "finetune"), total(0, "finetune")
    sass = runs[-1][1]
    return {"data": str(data_dir), "pretrain_s": pre / n, "finetune_s": fine / n,
            "samples_per_s": sass.samples["finetune"] * n / fine,
            "pretrain_samples": sass.samples.get("pretrain", 0),
            "finetune_samples": sass.samples["finetune"],
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "baseline_two_tower_s": base_s / n, "ratio": (pre + fine) / base_s,
            "repeats": n,
            "ratio_per_repeat": [(s.seconds.get("pretrain", 0.0)
                                  + s.seconds["finetune"]) / b.seconds["finetune"] for b, s in runs],
            # the same comparison in CPU seconds of this (single-threaded) process
            "cpu_ratio": (total(1, "pretrain", "cpu_seconds") + total(1, "finetune", "cpu_seconds"))
            / total(0, "finetune", "cpu_seconds"),
            "epochs": {"pretrain": cfg.pretrain_epochs, "finetune": cfg.finetune_epochs}}


def bench_quality(settings, data_dir, scenarios_file=None, seeds: int = 3, models=None,
                  epochs: int | None = None, progress: bool = True, branches: bool = True,
                  cold_start: bool = True, synthetic: dict | None = None, ranking: bool = True) -> dict:
    """Every model x seed, the BENCHMARKS.md protocol on the test split, averaged over seeds; with
    ``branches`` (and sass among the models) also the recall branches (``cli.bench.recall_quality``);
    with ``ranking`` the rankers on each seed's SASS candidates (``bench_ranking``); then
    (``cold_start``) the cold-start protocol per seed (``cold_start_figures``).  ``synthetic``: the
    synthetic source's parameters instead of a dataset folder."""
    from training.baselines import MODELS, fit
    from training.data import prepare
    from training.evaluate import evaluate
    from training.pipeline import set_threads

    set_threads(settings)
    models = list(models or MODELS)
    t0 = time.perf_counter()
    events, items = source_events_and_catalog(settings, data_dir, scenarios_file, synthetic)
    data = prepare(events, settings.scenarios)
    _log(f"loaded {len(events)} events and {len(items)} catalogue items, built features in "
         f"{time.perf_counter() - t0:.1f}s")
    runs: dict[str, list[dict]] = {m: [] for m in models}
    val: dict[str, list[dict]] = {m: [] for m in models}
    seconds: dict[str, float] = {m: 0.0 for m in models}
    losses = {}
    best_epochs: dict[str, list] = {m: [] for m in models}  # stage-2 epoch early stopping kept, per seed
    sass_scorers = []
    for seed in range(seeds):
        for m in models:
            t0 = time.perf_counter()
            f = fit(m, data, settings.training, _cfg(settings, seed, epochs, progress))
            seconds[m] += time.perf_counter() - t0
            runs[m].append(evaluate(f.scorer, data, "test"))
            val[m].append(evaluate(f.scorer, data, "val"))
            losses.setdefault(m, f.history.losses)
            best_epochs[m].append(f.history.best_epoch.get("finetune"))
            if m == "sass":
                sass_scorers.append(f.scorer)
            _log(f"seed {seed} {m}: test recall@50 mean {runs[m][-1]['recall@50']['mean']:.4f} "
                 f"({time.perf_counter() - t0:.0f}s)")

    def avg(rs):
        return {metric: {k: float(np.mean([r[metric][k] for r in rs])) for k in rs[0][metric]}
                for metric in rs[0]}

    result = {"dataset": "synthetic" if synthetic else str(data_dir), "seeds": seeds,
              "models": {m: avg(runs[m]) for m in models},
              "val": {m: avg(val[m]) for m in models},
              "std_recall@50_mean": {m: float(np.std([r["recall@50"]["mean"] for r in runs[m]])) for m in models},
              "train_s": seconds, "best_epochs": best_epochs}
    if branches and sass_scorers:
        item_tags = {it.item_id: list(it.tags) for it in items}
        result["branches"] = _branches(settings, data, events, item_tags, sass_scorers, result["models"])
    if ranking and sass_scorers:
        result.update(bench_ranking(settings, data, events, sass_scorers, progress))
    if cold_start:
        figures = [cold_start_figures(settings, events, items, seed, epochs, progress) for seed in range(seeds)]
        result["cold_start"] = average_cold_start(figures, result["models"].get("sass"))
    from training.report import write_report

    rdir = Path(settings.training.report_dir) / time.strftime("bench-quality-%Y%m%dT%H%M%S")
    result["report"] = write_report(rdir, losses, result["models"], data.scenarios,
                                    title=f"bench quality on {result['dataset']}, {seeds} seeds")["dir"]
    return result


def _branches(settings, data, events, item_tags: dict, sass_scorers, models: dict) -> dict:
    """The recall branches on the same data and SASS models (tags: the catalogue's), and the issue's
    check against every model."""
    from cli.bench.recall_quality import branch_quality

    out = branch_quality(settings, data, events, item_tags, sass_scorers)
    merged = out["merged"]["recall@50"]
    out["checks"]["merged_at_50_beats_every_model_in_every_scenario"] = all(
        merged[str(k)] >= max(m["recall@50"][str(k)] for m in models.values()) for k in range(data.n_scenarios))
    return out


# --------------------------------------------------------------------------- cold start (issue 15)

def source_events_and_catalog(settings, data_dir=None, scenarios_file=None, synthetic: dict | None = None):
    """(events frame, catalogue items) of a MovieLens-format folder, or of the synthetic source
    (``synthetic``: its ``n_users``/``n_items``/``n_events``/``seed``), whose items carry posters."""
    from streaming.catalog import movielens_catalog, synthetic_catalog

    if synthetic is not None:
        from streaming.sources import SyntheticSource, events_frame

        src = SyntheticSource(scenarios=settings.scenarios, **synthetic)
        return events_frame(src.events()), list(synthetic_catalog(src))
    from sassflow.datasets import Dataset

    data_dir = Path(data_dir)
    ds = Dataset(data_dir, Path(scenarios_file) if scenarios_file else settings.data.find_scenarios_file(data_dir),
                 settings.scenarios)
    return ds.load_events(), list(movielens_catalog(ds))


def cold_start_figures(settings, events, items, seed: int, epochs: int | None = None, progress: bool = True,
                       frac: float = 0.1) -> dict:
    """One seed of the cold-start protocol (``training.coldstart``): SASS on the warm items, the
    content tower aligned to it (with and, when items carry images, without the image modality),
    then recall on the held-out items' test clicks against pop_new and random, and the warm items'
    recall under the usual protocol."""
    import tempfile

    from sassflow.contracts.artifacts import ModelArtifact
    from training.baselines import fit
    from training.coldstart import (
        clicks_content_scorer, content_scorer, hold_out_items, pop_new_scorer, random_scorer,
        warm_recall_with_new_items,
    )
    from training.content import calibrate_blend, content_config, fit_content_tower
    from training.evaluate import evaluate
    from training.export import export_artifacts

    split = hold_out_items(events, settings.scenarios, {it.item_id: it.shown_in(settings.scenarios) for it in items},
                           frac, seed)
    _log(f"cold start seed {seed}: {len(split.held_out)} items held out, {split.n_cold_clicks} cold test clicks")
    sass = fit("sass", split.warm, settings.training, _cfg(settings, seed, epochs, progress))
    out = {"warm_recall@50": evaluate(sass.scorer, split.warm, "test")["recall@50"],
           "held_out_items": int(len(split.held_out)), "cold_test_clicks": split.n_cold_clicks}
    with tempfile.TemporaryDirectory() as tmp:
        export_artifacts(sass.model, tmp, split.warm)
        targets = {s: ModelArtifact(tmp).read_scenario(s) for s in settings.scenarios}
    by_id = {it.item_id: it for it in items}
    variants = {"content": settings.content.image and any(it.image for it in items)}
    if variants["content"]:
        variants["content_no_image"] = False
    scorers = {"pop_new": pop_new_scorer(split), "random": random_scorer(seed)}
    for name, image in variants.items():
        cfg = content_config(settings, settings.scenarios, settings.training.embedding_dim, image=image)
        tower, _ = fit_content_tower(items, targets, cfg, settings, seed, progress)
        # the ranking among held-out items: the tower's own vectors (a blend > 0 keeps that order;
        # blend 0 would make every new item the same vector)
        cold = [[by_id[i] for i in cat.tolist()] for cat in split.catalogs]
        vectors = [tower.encode(c, s) for c, s in zip(cold, settings.scenarios)]
        scorers[name] = content_scorer(sass.model, vectors)
        if name != "content":
            continue
        content_of = [dict(zip(by_id, tower.encode(items, s))) for s in settings.scenarios]
        scorers["content_of_clicks"] = clicks_content_scorer(split, content_of, vectors)
        # competing with warm items: blended as train_content calibrates it on the warm validation split
        tower.cfg.blend, tower.cfg.anchors, _ = calibrate_blend(sass.model, split.warm, items, targets, cfg, settings,
                                                                seed=seed)
        out["content_blend"] = tower.cfg.blend
        served = [tower.encode(c, s) for c, s in zip(cold, settings.scenarios)]
        out["warm_recall@50_with_new_items"] = warm_recall_with_new_items(split, sass.model, served)["recall@50"]
    for name, scorer in scorers.items():
        r = evaluate(scorer, split, "test")
        out[name] = {"recall@50": r["recall@50"], "recall@20": r["recall@20"]}
        _log(f"cold start seed {seed} {name}: recall@50 mean {r['recall@50']['mean']:.4f}, "
             f"recall@20 mean {r['recall@20']['mean']:.4f}")
    return out


def average_cold_start(runs: list[dict], today_sass: dict | None) -> dict:
    """The seeds' cold-start figures averaged; ``warm_ratio`` against today's SASS recall@50 mean."""
    def avg(key_path):
        vals = [r for r in runs]
        for k in key_path:
            vals = [v[k] for v in vals]
        return {k: float(np.mean([v[k] for v in vals])) for k in vals[0]}

    out = {name: {m: avg((name, m)) for m in ("recall@50", "recall@20")}
           for name in ("content", "content_of_clicks", "content_no_image", "pop_new", "random") if name in runs[0]}
    out["warm_recall@50"] = avg(("warm_recall@50",))
    if "warm_recall@50_with_new_items" in runs[0]:
        out["warm_recall@50_with_new_items"] = avg(("warm_recall@50_with_new_items",))
    out["held_out_items"], out["cold_test_clicks"] = runs[0]["held_out_items"], runs[0]["cold_test_clicks"]
    out["content_blend"] = [r.get("content_blend") for r in runs]  # per seed: the calibrated blends
    content, pop = out["content"]["recall@50"]["mean"], out["pop_new"]["recall@50"]["mean"]
    out["content_vs_pop_new"] = content / pop if pop else None
    if today_sass is not None:
        out["warm_ratio"] = out["warm_recall@50"]["mean"] / today_sass["recall@50"]["mean"]
        if "warm_recall@50_with_new_items" in out:
            out["warm_ratio_with_new_items"] = (out["warm_recall@50_with_new_items"]["mean"]
                                                / today_sass["recall@50"]["mean"])
    return out


# --------------------------------------------------------------------------- ranking (issue 14)

RANKERS = ("fine", "coarse", "lambdarank", "recall_order")


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if v == v]
    return float(np.mean(finite)) if finite else float("nan")  # a scenario without test impressions: no AUC


def _mean_over_runs(runs: list[dict]) -> dict:
    """model -> metric -> scenario | "mean" -> the mean over runs (seeds)."""
    return {m: {metric: {k: _nanmean([r[m][metric][k] for r in runs]) for k in runs[0][m][metric]}
                for metric in runs[0][m]} for m in runs[0]}


def ranking_run(settings, data, events, scorer, seed: int, progress: bool = False) -> dict:
    """One seed of the ranking protocol (BENCHMARKS.md ``ranking``): the lists of the recall model
    ``scorer``, the rankers with and without exposure negatives and LambdaRank trained on the same
    training lists, all scored on the same test candidate sets."""
    from training.rankers import RECALL_BRANCHES
    from training.ranking import RankingData, RankingParams, dense_of, fit_lambdarank, ranking_metrics, train_rankers

    p = RankingParams.from_settings(settings.ranking, settings.training, seed=seed, progress=progress)
    branches = list(RECALL_BRANCHES)
    t0 = time.perf_counter()
    rd = RankingData(data, events, scorer, p)
    _log(f"seed {seed} ranking lists: {rd.train.n_lists} train / {rd.valid.n_lists} val / {rd.test.n_lists} test "
         f"requests, {len(rd.train.owner)} train rows ({rd.seconds:.0f}s)")
    with_exposure = train_rankers(rd, p, branches)
    without = train_rankers(rd, p, branches, train=rd.impressions_only())
    t1 = time.perf_counter()
    train = rd.with_exposure()
    rank = fit_lambdarank(train, dense_of(train, branches), rd.valid, dense_of(rd.valid, branches), seed)
    lambdarank = ranking_metrics(rd.test, rank(rd.test, dense_of(rd.test, branches)), data.n_scenarios)
    test = with_exposure.metrics["test"]
    _log(f"seed {seed} ranking test ndcg@10: fine {test['fine']['ndcg@10']['mean']:.4f}, lambdarank "
         f"{lambdarank['ndcg@10']['mean']:.4f}, recall order {test['recall_order']['ndcg@10']['mean']:.4f} "
         f"({time.perf_counter() - t0:.0f}s)")
    return {"ranking": {"fine": test["fine"], "coarse": test["coarse"], "lambdarank": lambdarank,
                        "recall_order": test["recall_order"]},
            "exposure": {"with_negatives": test["fine"], "impressions_only": without.metrics["test"]["fine"]},
            "val": {"fine": with_exposure.metrics["val"]["fine"], "recall_order": with_exposure.metrics["val"]["recall_order"]},
            "coarse_keep_recall": test.get("coarse_keep_recall"), "included": with_exposure.included,
            "seconds": {"lists": rd.seconds, **with_exposure.seconds, "lambdarank": time.perf_counter() - t1}}


def bench_ranking(settings, data, events, scorers: list, progress: bool = False) -> dict:
    """The ranking figures averaged over the seeds' recall models; keys ``ranking`` (BENCHMARKS.md),
    ``ranking_exposure`` (fine ranker trained with vs without the exposure negatives), ``ranking_checks``
    (the issue's goals) and ``ranking_detail``."""
    runs = [ranking_run(settings, data, events, scorer, seed, progress) for seed, scorer in enumerate(scorers)]
    ranking = _mean_over_runs([r["ranking"] for r in runs])
    exposure = _mean_over_runs([r["exposure"] for r in runs])
    ndcg = {m: ranking[m]["ndcg@10"] for m in RANKERS}
    checks = {f"fine_ndcg@10_{where}_{cmp}": ok for where in ("mean", "0") for cmp, ok in (
        ("ge_1.15x_recall_order", ndcg["fine"][where] >= 1.15 * ndcg["recall_order"][where]),
        ("ge_lambdarank", ndcg["fine"][where] >= ndcg["lambdarank"][where]))}
    return {"ranking": ranking, "ranking_exposure": exposure, "ranking_checks": checks,
            "ranking_detail": {"seeds": len(runs), "val": _mean_over_runs([r["val"] for r in runs]),
                               "coarse_keep_recall": float(np.mean([r["coarse_keep_recall"] for r in runs])),
                               "gate_kept": [r["included"] for r in runs], "seconds": [r["seconds"] for r in runs],
                               "ratio_fine_to_recall_order_ndcg@10": {
                                   k: ndcg["fine"][k] / ndcg["recall_order"][k] for k in ndcg["fine"]}}}
