"""Plain functions the DAG tasks and the CLI call: settings + plain arguments in,
JSON-able dicts out, every intermediate result in a folder so each step can run alone.

    build_training_set -> <dir>/events.parquet          (offline history, a time window)
    pretrain           -> <dir>/pretrained.pt + history (stage 1)
    finetune           -> <dir>/ model artifact         (stage 2, ModelArtifact layout)
    train_content_tower -> <model dir>/content_*        (the content tower + cold items, same artifact)
    evaluate           -> <dir>/metrics.json            (BENCHMARKS.md protocol, val + test)
    evaluate_with_baselines -> the same + the baselines on the same prepared data
    register_and_gate  -> registry row + gate decision (candidate, re-scored champion, popularity)
    train_rankers      -> <dir>/ ranker artifact        (coarse + fine, gated against the recall order)
    register_rankers   -> registry row ``ranker``       (promoted if the gate kept them, else rejected)
    train_pipeline     -> all of it in memory (`sassflow train`)
"""
from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from sassflow.contracts.artifacts import ModelArtifact
from sassflow.contracts.features import model_feature_spec

log = logging.getLogger(__name__)


def set_threads(settings) -> None:
    import torch

    torch.set_num_threads(max(1, settings.training.torch_threads))


def load_events(settings, dataset_dir) -> pd.DataFrame:
    """A ``build_training_set`` folder (events.parquet) or a MovieLens-format dataset folder."""
    from sassflow.datasets import load_events as load_dataset

    d = Path(dataset_dir)
    if (d / "events.parquet").exists():
        return pd.read_parquet(d / "events.parquet")
    return load_dataset(d, settings.data.find_scenarios_file(d), settings.scenarios)


def prepare_data(settings, events: pd.DataFrame):
    from training.data import prepare

    return prepare(events, settings.scenarios)


def load_data(settings, dataset_dir):
    """Set the torch threads, then load and prepare a dataset folder (see ``load_events``)."""
    set_threads(settings)
    return prepare_data(settings, load_events(settings, dataset_dir))


def new_model(settings, data, **over):
    """A freshly initialised SASS for ``data`` and its ``TrainConfig`` (``over``: overrides)."""
    import torch

    from training.baselines import build_model
    from training.trainer import TrainConfig

    cfg = TrainConfig.from_settings(settings.training, **over)
    torch.manual_seed(cfg.seed)
    return build_model(data, settings.training), cfg


def show_progress() -> bool:
    """Progress bars only on a terminal: in a task log (Airflow records stderr at error level) a bar
    is a stream of error lines; the per-epoch losses are logged at info instead."""
    return sys.stderr.isatty()



def _write_history(out_dir, hist) -> None:
    (Path(out_dir) / "history.json").write_text(json.dumps({"losses": hist.losses, "seconds": hist.seconds}))


def loss_curve(losses: list[float], points: int = 200) -> list[float]:
    """A stage's per-step losses as at most ``points`` means of consecutive steps (small enough
    for a task result)."""
    if not losses:
        return []
    chunks = np.array_split(np.asarray(losses, dtype=float), min(points, len(losses)))
    return [round(float(c.mean()), 5) for c in chunks]


def build_training_set(settings, start_ms: int | None, end_ms: int | None, out_dir) -> dict:
    """Snapshot the offline history of [start_ms, end_ms) into ``out_dir/events.parquet``."""
    from training.data import load_history_events

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ev = load_history_events(settings.streaming.offline_dir, start_ms, end_ms, settings.scenarios)
    ev.to_parquet(out / "events.parquet", index=False)
    info = {"path": str(out), "events": len(ev), "start_ms": start_ms, "end_ms": end_ms,
            "clicks": int((ev["event_type"] == "click").sum()) if len(ev) else 0}
    (out / "meta.json").write_text(json.dumps(info))
    return info


def pretrain(settings, dataset_dir, out_dir) -> dict:
    """Stage 1 on a dataset folder; writes ``pretrained.pt`` (state_dict) + ``history.json``."""
    import torch

    from training.trainer import pretrain as stage1

    data = load_data(settings, dataset_dir)
    model, cfg = new_model(settings, data, progress=show_progress())
    hist = stage1(model, data, cfg)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out / "pretrained.pt")
    _write_history(out, hist)
    return {"path": str(out / "pretrained.pt"), "seconds": hist.seconds.get("pretrain", 0.0),
            "loss_curve": loss_curve(hist.losses.get("pretrain", [])),
            "steps": len(hist.losses.get("pretrain", []))}


def finetune(settings, dataset_dir, pretrained_dir, out_dir) -> dict:
    """Stage 2 from the stage-1 weights (or from scratch when ``pretrained_dir`` is None);
    exports the serving artifacts to ``out_dir``."""
    import torch

    from training.baselines import finetune_on_validation
    from training.export import export_artifacts
    from training.trainer import History

    data = load_data(settings, dataset_dir)
    model, cfg = new_model(settings, data, progress=show_progress())
    if pretrained_dir:
        model.load_state_dict(torch.load(Path(pretrained_dir) / "pretrained.pt", weights_only=True))
        model.set_item_popularity(data.item_clicks)  # the same data: a no-op, unless stage 1 saw other data
    hist = finetune_on_validation(model, data, cfg, History())
    shas = export_artifacts(model, out_dir, data, extra={"feature_spec": model_feature_spec(settings.scenarios),
                                                         "window": list(data.window)})
    _write_history(out_dir, hist)
    return {"path": str(out_dir), "seconds": hist.seconds.get("finetune", 0.0), "files": len(shas),
            "loss_curve": loss_curve(hist.losses.get("finetune", [])),
            "epochs": hist.epochs.get("finetune"), "best_epoch": hist.best_epoch.get("finetune"),
            "val_curve": hist.val_curve.get("finetune", []), "window": list(data.window)}


def evaluate(settings, dataset_dir, model_dir, data=None) -> dict:
    """Validation and test metrics of an exported model; also writes ``metrics.json``."""
    from training.evaluate import evaluate as run_eval, model_scorer
    from training.export import load_model

    data = data or load_data(settings, dataset_dir)
    model, _ = load_model(model_dir)
    metrics = {split: run_eval(model_scorer(model), data, split) for split in ("val", "test")}
    (Path(model_dir) / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def evaluate_with_baselines(settings, dataset_dir, model_dir, baselines=("pop",)) -> dict:
    """The candidate's metrics and the baselines' on the same data, prepared once."""
    from training.baselines import fit
    from training.evaluate import evaluate as run_eval
    from training.trainer import TrainConfig

    data = load_data(settings, dataset_dir)
    candidate = evaluate(settings, dataset_dir, model_dir, data)
    cfg = TrainConfig.from_settings(settings.training, progress=False)
    fitted = {name: fit(name, data, settings.training, cfg) for name in baselines}
    return {"candidate": candidate,
            "baselines": {name: {split: run_eval(f.scorer, data, split) for split in ("val", "test")}
                          for name, f in fitted.items()}}


def train_content_tower(settings, dataset_dir, model_dir) -> dict:
    """The content tower for the fine-tuned artifact in ``model_dir`` (``training.content``), its
    length calibrated on the dataset's validation split; the retrain DAG's step after fine-tuning,
    before evaluation and registration (the artifact's checksum must cover it)."""
    from training.content import train_content

    return train_content(settings, dataset_dir, model_dir, data=load_data(settings, dataset_dir))


def register_and_gate(settings, model_dir, metrics: dict | None = None, name: str = "sass", *,
                      dataset_dir=None, events: pd.DataFrame | None = None, data=None) -> dict:
    """Register an exported model as a candidate and run the champion/challenger gate on it: the
    candidate, the promoted model (re-scored from its artifact) and popularity, all scored now on
    the validation split of the same data (``dataset_dir``, or ``events`` + their prepared ``data``)."""
    from training.gate import gate_scores
    from training.registry import ModelRegistry, champion_challenger_gate, feature_hash

    d = Path(model_dir)
    if metrics is None:
        metrics = json.loads((d / "metrics.json").read_text())
    if events is None:
        set_threads(settings)
        events = load_events(settings, dataset_dir)
    data = data or prepare_data(settings, events)
    cfg = ModelArtifact(d).read_config()
    reg = ModelRegistry.from_settings(settings)
    window = cfg.get("window") or [None, None]
    v = reg.register(d, name=name, metrics=metrics, data_start_ms=window[0], data_end_ms=window[1],
                     config=cfg, feature_hash=feature_hash(cfg.get("feature_spec", {})))
    with reg.promotion_lock(name):  # the champion read here is the one replaced (reentrant: a DAG holds it too)
        scores = gate_scores(events, data, d, reg.promoted(name))
        promoted, reason = champion_challenger_gate(reg, v, scores, settings.training.quality_tolerance)
    return {"version": v.id, "promoted": promoted, "reason": reason, "artifact_path": v.artifact_path,
            "artifact_sha256": v.artifact_sha256, "scores": scores.to_dict(),
            "candidate": scores.candidate, "champion": scores.champion, "popularity": scores.popularity}


def train_pipeline(settings, events_df: pd.DataFrame, out_dir=None, baselines=("pop",),
                   register: bool = True, report: bool = True, progress: bool = True,
                   catalog: list | None = None) -> dict:
    """Prepare, pre-train, fine-tune, evaluate (with baselines), export, register, gate and
    write the run report, all from one events frame.  ``catalog``: the item catalogue; with it the
    content tower is trained and added to the artifact before it is registered."""
    from training.baselines import fit
    from training.evaluate import evaluate as run_eval
    from training.export import export_artifacts
    from training.trainer import TrainConfig

    set_threads(settings)
    t0 = time.perf_counter()
    data = prepare_data(settings, events_df)
    run_id = time.strftime("%Y%m%dT%H%M%S") + f"-{np.random.default_rng().integers(1 << 16):04x}"
    out = Path(out_dir) if out_dir else Path(settings.training.artifact_dir) / run_id
    cfg = TrainConfig.from_settings(settings.training, progress=progress)
    fitted = {name: fit(name, data, settings.training, cfg) for name in ("sass", *baselines)}
    metrics = {name: {split: run_eval(f.scorer, data, split) for split in ("val", "test")}
               for name, f in fitted.items()}
    sass = fitted["sass"]
    export_artifacts(sass.model, out, data, extra={"feature_spec": model_feature_spec(settings.scenarios),
                                                   "window": list(data.window), "run_id": run_id,
                                                   "train_config": cfg.__dict__})
    (out / "metrics.json").write_text(json.dumps(metrics["sass"], indent=2))
    content = None
    if catalog:
        from training.content import train_content

        content = train_content(settings, None, out, items=catalog, progress=progress, data=data)
    result = {"content": content, "run_id": run_id, "artifact_dir": str(out), "metrics": metrics["sass"],
              "baselines": {k: v for k, v in metrics.items() if k != "sass"},
              "seconds": sass.history.seconds, "events": data.n_events, "window": list(data.window)}
    if register:
        result["registry"] = register_and_gate(settings, out, metrics["sass"], events=events_df, data=data)
    if report:
        from training.report import write_report

        rdir = Path(settings.training.report_dir) / run_id
        result["report"] = write_report(rdir, {k: f.history.losses for k, f in fitted.items()},
                                        {k: m["test"] for k, m in metrics.items()}, data.scenarios,
                                        title=f"sassflow training run {run_id}")
    result["total_s"] = time.perf_counter() - t0
    return result


# --------------------------------------------------------------------------- rankers (after recall)

def train_rankers(settings, dataset_dir, model_dir, out_dir, with_test: bool = True) -> dict:
    """The coarse and fine rankers on the recall model at ``model_dir`` (``training.ranking``): trained on
    the validation split's requests, gated on held-out users' (the cascade must beat the recall order),
    test figures beside; writes the ranker artifact (``RankerArtifact``, the decision in its config).
    A window without training or gating requests (a day of history) trains nothing: ``path`` None and
    the reason, so the bundle ships the recall model alone."""
    from training.evaluate import model_scorer
    from training.export import load_model
    from training.rankers import RECALL_BRANCHES, save_rankers
    from training.ranking import RankingData, RankingParams, train_rankers as fit

    set_threads(settings)
    events = load_events(settings, dataset_dir)
    data = prepare_data(settings, events)
    model, _ = load_model(model_dir)
    p = RankingParams.from_settings(settings.ranking, settings.training, seed=settings.training.seed,
                                    progress=show_progress())
    rd = RankingData(data, events, model_scorer(model), p, with_test=with_test)
    train = rd.with_exposure()
    if not len(train.owner) or not rd.valid.n_lists:
        reason = (f"too little data for the rankers: {train.n_lists} training requests with candidate rows, "
                  f"{rd.valid.n_lists} validation requests")
        log.info("rankers left out: %s", reason)
        return {"path": None, "included": False, "reason": reason, "metrics": {}, "seconds": {"data": rd.seconds},
                "window": list(data.window)}
    res = fit(rd, p, list(RECALL_BRANCHES), train)
    val = res.metrics["val"]
    gate_metrics = {f"{name}_ndcg@10": val[name]["ndcg@10"]["mean"] for name in ("fine", "coarse", "recall_order")}
    save_rankers(out_dir, res.cfg, res.coarse, res.fine, data.items.ids, data.item_clicks, rd.co_clicks,
                 extra={"included": res.included, "reason": res.reason, "gate_metrics": gate_metrics,
                        "scenarios": list(data.scenarios),
                        "metrics": res.metrics, "seconds": res.seconds, "window": list(data.window),
                        "recall_model": str(model_dir)})
    log.info("rankers %s: %s", "kept" if res.included else "left out", res.reason)
    return {"path": str(out_dir), "included": res.included, "reason": res.reason, "metrics": res.metrics,
            "seconds": res.seconds, "window": list(data.window)}


def register_rankers(settings, ranker_dir, recall_version: int | None = None) -> dict:
    """Register the rankers (name ``ranker``) with their metrics, promoted if their gate kept them,
    else rejected with its reason; returns the registry's stored copy (what a bundle ships)."""
    from training.registry import ModelRegistry

    d = Path(ranker_dir)
    meta = json.loads((d / "config.json").read_text())
    reg = ModelRegistry.from_settings(settings)
    window = meta.get("window") or [None, None]
    v = reg.register(d, name="ranker", metrics=meta.get("metrics", {}), data_start_ms=window[0],
                     data_end_ms=window[1], config={"ranker": meta.get("ranker"), "recall_version": recall_version})
    status = "promoted" if meta.get("included") else "rejected"
    reg.set_status(v.id, status, meta.get("reason"))
    return {"version": v.id, "ranker_dir": v.artifact_path, "included": bool(meta.get("included")),
            "reason": meta.get("reason"), "recall_version": recall_version}
