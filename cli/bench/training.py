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
                  epochs: int | None = None, progress: bool = True, branches: bool = True) -> dict:
    """Every model x seed, the BENCHMARKS.md protocol on the test split, averaged over seeds; with
    ``branches`` (and sass among the models) also the recall branches (``cli.bench.recall_quality``)."""
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

    result = {"dataset": str(data_dir), "seeds": seeds, "models": {m: avg(runs[m]) for m in models},
              "val": {m: avg(val[m]) for m in models},
              "std_recall@50_mean": {m: float(np.std([r["recall@50"]["mean"] for r in runs[m]])) for m in models},
              "train_s": seconds, "best_epochs": best_epochs}
    if branches and sass_scorers:
        result["branches"] = _branches(settings, data, data_dir, scenarios_file, sass_scorers, result["models"])
    from training.report import write_report

    rdir = Path(settings.training.report_dir) / time.strftime("bench-quality-%Y%m%dT%H%M%S")
    result["report"] = write_report(rdir, losses, result["models"], data.scenarios,
                                    title=f"bench quality on {Path(data_dir).name}, {seeds} seeds")["dir"]
    return result


def _branches(settings, data, data_dir, scenarios_file, sass_scorers, models: dict) -> dict:
    """The recall branches on the same data and SASS models, and the issue's check against every model."""
    from cli.bench.recall_quality import branch_quality
    from sassflow.datasets import Dataset

    sf = Path(scenarios_file) if scenarios_file else settings.data.find_scenarios_file(Path(data_dir))
    dataset = Dataset(data_dir, sf, settings.scenarios)
    out = branch_quality(settings, data, dataset.load_events(), dataset.item_tags(), sass_scorers)
    merged = out["merged"]["recall@50"]
    out["checks"]["merged_at_50_beats_every_model_in_every_scenario"] = all(
        merged[str(k)] >= max(m["recall@50"][str(k)] for m in models.values()) for k in range(data.n_scenarios))
    return out
