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


def _cfg(settings, seed: int, epochs: int | None, progress: bool):
    from training.trainer import TrainConfig

    over = {"seed": seed, "progress": progress}
    if epochs:
        over["finetune_epochs"] = epochs
    return TrainConfig.from_settings(settings.training, **over)


def bench_train(settings, data_dir, epochs: int | None = None, progress: bool = True, repeats: int = 2) -> dict:
    """Wall time of SASS's two stages against a plain two-tower on the same data and epochs.

    The two alternate, ``repeats`` times each (two-tower, SASS, two-tower, SASS, ...), and the
    ratio is of the summed times, so a burst of load from elsewhere on a shared machine falls
    on both sides instead of on whichever happened to be running."""
    from training.baselines import fit
    from training.pipeline import set_threads

    set_threads(settings)
    data = _data(settings, data_dir)
    cfg = _cfg(settings, settings.training.seed, epochs, progress)
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
                  epochs: int | None = None, progress: bool = True, ranking: bool = True) -> dict:
    """Every model x seed, the BENCHMARKS.md protocol on the test split, averaged over seeds; with
    ``ranking`` (and sass among the models) also the rankers on each seed's SASS candidates
    (``bench_ranking``)."""
    from training.baselines import MODELS, fit
    from training.evaluate import evaluate
    from training.pipeline import set_threads

    set_threads(settings)
    models = list(models or MODELS)
    data = _data(settings, data_dir, scenarios_file)
    runs: dict[str, list[dict]] = {m: [] for m in models}
    val: dict[str, list[dict]] = {m: [] for m in models}
    seconds: dict[str, float] = {m: 0.0 for m in models}
    losses = {}
    sass_scorers = []
    for seed in range(seeds):
        for m in models:
            t0 = time.perf_counter()
            f = fit(m, data, settings.training, _cfg(settings, seed, epochs, progress))
            seconds[m] += time.perf_counter() - t0
            runs[m].append(evaluate(f.scorer, data, "test"))
            val[m].append(evaluate(f.scorer, data, "val"))
            losses.setdefault(m, f.history.losses)
            if m == "sass":
                sass_scorers.append(f.scorer)
            _log(f"seed {seed} {m}: test recall@50 mean {runs[m][-1]['recall@50']['mean']:.4f} "
                 f"({time.perf_counter() - t0:.0f}s)")

    def avg(rs):
        return {metric: {k: float(np.mean([r[metric][k] for r in rs])) for k in rs[0][metric]}
                for metric in rs[0]}

    result = {"dataset": str(data_dir), "seeds": seeds, "models": {m: avg(runs[m]) for m in models},
              "val": {m: avg(val[m]) for m in models},
              "std_recall@50_mean": {m: float(np.std([r["recall@50"]["mean"] for r in runs[m]])) for m in models},
              "train_s": seconds}
    if ranking and sass_scorers:
        from sassflow.datasets import load_events

        sf = Path(scenarios_file) if scenarios_file else settings.data.find_scenarios_file(Path(data_dir))
        events = load_events(data_dir, sf, settings.scenarios)
        result.update(bench_ranking(settings, data, events, sass_scorers, progress))
    from training.report import write_report

    rdir = Path(settings.training.report_dir) / time.strftime("bench-quality-%Y%m%dT%H%M%S")
    result["report"] = write_report(rdir, losses, result["models"], data.scenarios,
                                    title=f"bench quality on {Path(data_dir).name}, {seeds} seeds")["dir"]
    return result


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

    p = RankingParams.from_settings(settings.ranking, seed=seed, progress=progress)
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
