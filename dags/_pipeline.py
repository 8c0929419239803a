"""The retrain pipeline as Airflow tasks, shared by ``sass_retrain`` (scheduled) and ``sass_backfill``
(a hand-picked window): snapshot of the window (the training set) → stage-1 pre-train → stage-2
fine-tune → content tower (new items from their content) → evaluate → quality gate + register, and
beside them the rankers (``_ranking``) → bundle (recall model + rankers) → publish; the online
features' consistency check runs alongside.  The gate scores the candidate, the promoted model
(re-scored) and popularity on the same validation data; while no model has ever passed it, the gate
task publishes a popularity bundle (``serving.fallback``) so the service answers with popular items.

Each task is a thin wrapper: it calls one plain function of ``streaming``/``training``/``serving``
(imported inside the task, so parsing stays fast), writes under its run folder and is idempotent for
its logical run (``_common.run_once``).  A rejected candidate skips the bundle tasks with the gate's
reason, so the served bundle stays as it was.

Concurrency: the heavy tasks share one pool (``settings.airflow.training_pool``), and the registry's
promotion lock makes the gate (read the champion, decide, promote) and the publish (only while the
version is still the promoted one) atomic, so concurrent runs see one promotion order and ``CURRENT``
always ends on the newest promoted model's bundle.  Run folders are scratch: the gate registers the
model into the registry's model store, and the bundle is built from that copy.
"""
from __future__ import annotations

from airflow.sdk import get_current_context, task, task_group
from airflow.sdk.exceptions import AirflowSkipException

from _ranking import ranking
from _common import BUNDLE_ALIAS, BUNDLE_ASSET, heavy, run_once, settings, show_decision


@task(**heavy())
def build_training_set(window: dict) -> dict:
    """Snapshot the window of the offline history into this run's folder (``training.pipeline``): the
    later tasks, and their retries, see exactly these events even while late events keep arriving.
    Point-in-time features are computed from this snapshot (strictly before each example).  A window
    without events skips the run, saying which days it looked at."""
    def work(out):
        from training.pipeline import build_training_set as snapshot

        return {**snapshot(settings(), window["start_ms"], window["end_ms"], str(out)), "dataset_dir": str(out)}

    info = run_once(get_current_context(), work)
    if not info["events"]:
        from training.windows import days_label

        raise AirflowSkipException(f"no events in the offline history for {days_label(window['start_ms'], window['end_ms'])}: "
                                   f"nothing to train on, the served bundle is unchanged")
    return info


@task(**heavy())
def pretrain(dataset: dict) -> dict:
    """Stage 1: scenario-contrastive pre-training."""
    def work(out):
        from training.pipeline import pretrain as stage1

        return {**stage1(settings(), dataset["dataset_dir"], str(out)), "model_dir": str(out)}

    return run_once(get_current_context(), work)


@task(**heavy())
def finetune(dataset: dict, pretrained: dict) -> dict:
    """Stage 2: scenario-specific fine-tuning from the pre-trained weights."""
    def work(out):
        from training.pipeline import finetune as stage2

        return {**stage2(settings(), dataset["dataset_dir"], pretrained["model_dir"], str(out)),
                "model_dir": str(out)}

    return run_once(get_current_context(), work)


@task(**heavy())
def evaluate(dataset: dict, model: dict) -> dict:
    """The candidate's validation/test recall, next to the popularity baseline on the same split
    (for the record; the gate task scores its own evidence, champion included, when it decides)."""
    def work(out):
        from training.pipeline import evaluate_with_baselines

        result = evaluate_with_baselines(settings(), dataset["dataset_dir"], model["model_dir"])
        _log_comparison(result["candidate"], result["baselines"])
        return result

    return run_once(get_current_context(), work)


def _log_comparison(candidate: dict, baselines: dict) -> None:
    for split in ("val", "test"):
        for metric, value in candidate[split].items():
            if isinstance(value, dict) and "mean" in value:
                others = ", ".join(f"{name} {m[split][metric]['mean']:.4f}" for name, m in baselines.items()
                                   if isinstance(m[split].get(metric), dict))
                print(f"{split} {metric}: candidate {value['mean']:.4f}; {others}")


@task(**heavy())
def quality_gate(dataset: dict, model: dict, metrics: dict) -> dict:
    """Register the candidate and promote it only if it passes the champion/challenger gate
    (``training.pipeline.register_and_gate``: candidate, re-scored promoted model and popularity on
    the same validation data). A rejection, recorded in the registry with the three numbers, skips
    the bundle tasks; if no model was ever promoted, a popularity bundle is published first."""
    def work(out):
        from training.pipeline import register_and_gate

        result = register_and_gate(settings(), model["model_dir"], metrics["candidate"],
                                   dataset_dir=dataset["dataset_dir"])
        if not result["promoted"]:
            result["fallback_bundle_id"] = _popularity_fallback(model["model_dir"], result["reason"])
        return result

    from training.registry import ModelRegistry

    context = get_current_context()
    with ModelRegistry.from_settings(settings()).promotion_lock():  # read champion -> promote, atomically
        result = run_once(context, work)
    show_decision(context, result)
    if not result["promoted"]:
        context["ti"].xcom_push(key="return_value", value=result)  # the decision stays visible on a skip
        served = (f"the popularity bundle {result['fallback_bundle_id']} is published"
                  if result.get("fallback_bundle_id") else "the served bundle is unchanged")
        raise AirflowSkipException(f"candidate {result.get('version')} rejected: {result['reason']}; {served}")
    print(f"candidate {result.get('version')} promoted: {result['reason']}")
    return result


def _popularity_fallback(model_dir: str, reason: str) -> str | None:
    """With no promoted model, publish a popularity bundle of this window; returns its id (else None)."""
    from serving.fallback import build_popularity_bundle
    from training.registry import ModelRegistry

    s = settings()
    if ModelRegistry.from_settings(s).promoted() is not None:
        return None
    return build_popularity_bundle(s, model_dir, reason=f"no model passed the quality gate: {reason}").name


@task(**heavy())
def build_bundle(gate: dict, rankers: dict) -> dict:
    """Per-scenario indexes + the user tower (+ the rankers the ranking gate kept), written as an
    immutable bundle (not yet served), from the registry's checked copies (not the run folders,
    which are scratch); without rankers the manifest says why."""
    def work(out):
        from serving.bundle import build_bundle as build
        from training.registry import ModelRegistry

        s = settings()
        registry = ModelRegistry.from_settings(s)
        ranker_dir = registry.artifact(rankers["version"]) if rankers.get("ranker_dir") else None
        path = build(s, registry.artifact(gate["version"]), gate["version"], publish=False, ranker_dir=ranker_dir,
                     ranking=None if ranker_dir else {"included": False, "reason": rankers["reason"]})
        return {"bundle_id": path.name, "path": str(path), "model_version": gate["version"],
                "rankers": rankers.get("version")}

    return run_once(get_current_context(), work)


@task(outlets=[BUNDLE_ALIAS], **heavy())
def publish(bundle: dict) -> dict:
    """Point the bundle folder at the new bundle (the running service hot-swaps to it) while its model
    is still the promoted one, and emit the bundle Asset, once: a re-run that finds the work done
    publishes nothing and emits nothing.  A model superseded by a newer promotion is skipped."""
    context = get_current_context()
    published_now = []

    def work(out):
        from serving.bundle import current_bundle_id, publish_bundle
        from training.registry import ModelRegistry, Superseded

        s = settings()
        registry = ModelRegistry.from_settings(s)
        try:
            with registry.holding_promotion(bundle["model_version"]):
                before = current_bundle_id(s)
                publish_bundle(s, bundle["bundle_id"])
                registry.mark_published(bundle["model_version"], bundle["bundle_id"])
        except Superseded as exc:
            return {**bundle, "published": False, "reason": f"{exc}: its newer run publishes instead"}
        published_now.append(True)
        return {**bundle, "published": True, "previous_bundle_id": before}

    result = run_once(context, work)
    if not result["published"]:
        raise AirflowSkipException(result["reason"])
    if published_now:
        context["outlet_events"][BUNDLE_ALIAS].add(BUNDLE_ASSET, extra={
            "bundle_id": result["bundle_id"], "model_version": str(result["model_version"])})
    else:
        print(f"bundle {result['bundle_id']} was published by an earlier try of this run: no new Asset event")
    return result


@task(**heavy())
def content_tower(dataset: dict, model: dict) -> dict:
    """The content tower aligned to the fine-tuned model (``training.pipeline.train_content_tower``),
    on a copy of the model in this task's folder: catalogue items the model never saw get their
    content vectors there, so the bundle indexes them.  Without a catalogue the copy is the model."""
    def work(out):
        import shutil

        from training.pipeline import train_content_tower

        target = out / "model"
        shutil.rmtree(target, ignore_errors=True)  # a retry starts from the fine-tuned model again
        shutil.copytree(model["model_dir"], target)
        return {**train_content_tower(settings(), dataset["dataset_dir"], str(target)), "model_dir": str(target)}

    result = run_once(get_current_context(), work)
    print(f"content tower: {'trained' if result.get('content') else 'none'} "
          f"({result.get('reason') or result.get('cold_items_added')})")
    return result


@task
def check_features() -> dict:
    """The online store against a recomputation from the offline history (``streaming.check``,
    sampled keys): the report (counts and example keys) is the task's result; with
    ``streaming.check_fails_retrain`` a mismatch fails the task, listing examples.  It neither feeds
    nor blocks the training tasks."""
    from airflow.sdk.exceptions import AirflowFailException

    from streaming.check import check_features as check

    s = settings()
    report = check(s, sample=s.streaming.check_sample)
    print(f"features check: {report['mismatched_keys']} of {report['sampled_keys']} sampled keys differ "
          f"({report['missing_keys']} missing from the online store)")
    if report["mismatched_keys"] and s.streaming.check_fails_retrain:
        raise AirflowFailException(f"online features differ from the history's recomputation: "
                                   f"{report['examples'][:3]}")
    return report


@task_group(group_id="retrain")
def retrain(window):
    """The whole retrain chain for ``window`` ({start_ms, end_ms}); it trains on every scenario."""
    check_features()
    dataset = build_training_set(window)
    stage1 = pretrain(dataset)
    model = content_tower(dataset, finetune(dataset, stage1))
    metrics = evaluate(dataset, model)
    rankers = ranking(dataset, model)
    gate = quality_gate(dataset, model, metrics)
    publish(build_bundle(gate, rankers))  # no return: callers then get the group itself, for `>>`
