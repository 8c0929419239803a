"""The rankers' tasks of the retrain: after the recall model is fine-tuned, train the coarse and fine
rankers on it (``training.pipeline.train_rankers``), then register them with their metrics and the
gate's decision (``register_rankers``: promoted if the cascade beats the recall order on validation,
else rejected with the reason).  The bundle task ships them beside the recall model
(``serving.bundle.build_bundle(..., ranker_dir=...)``): one immutable bundle, one atomic swap, and a
rollback restores both.  Rankers the gate left out are not shipped and the bundle's manifest says why.

Wiring (``_pipeline.retrain``)::

    stage2 = finetune(dataset, stage1)
    rankers = ranking(dataset, stage2)            # this task group
    ...
    gate = quality_gate(stage2, metrics)
    publish(build_bundle(gate, rankers))          # build_bundle passes rankers["ranker_dir"]

Like every heavy task: the training pool, a timeout, idempotent per logical run (``run_once``).
"""
from __future__ import annotations

from airflow.sdk import get_current_context, task, task_group

from _common import heavy, run_once, settings


@task(**heavy())
def train_rankers(dataset: dict, model: dict) -> dict:
    """Coarse + fine rankers on the fine-tuned recall model's candidates (validation-split requests,
    exposure negatives), the gate's decision and the test figures in the result."""
    def work(out):
        from training.pipeline import train_rankers as fit

        s = settings()
        if not s.ranking.enabled:
            return {"included": False, "reason": "rankers are disabled (SASSFLOW_RANKING__ENABLED=false)",
                    "path": None}
        return fit(s, dataset["dataset_dir"], model["model_dir"], str(out))

    result = run_once(get_current_context(), work)
    print(f"rankers {'kept' if result['included'] else 'left out'}: {result['reason']}")
    return result


@task(**heavy())
def register_rankers(rankers: dict) -> dict:
    """The rankers into the registry (name ``ranker``) with their metrics; the registry's checked copy
    is what the bundle ships."""
    def work(out):
        from training.pipeline import register_rankers as register

        if not rankers.get("path"):
            return {"version": None, "ranker_dir": None, "included": False, "reason": rankers["reason"]}
        return register(settings(), rankers["path"])

    return run_once(get_current_context(), work)


@task_group(group_id="ranking")
def ranking(dataset, model):
    """Train, then register the rankers; returns the registered rankers ({ranker_dir, included, reason})."""
    return register_rankers(train_rankers(dataset, model))
