"""Training the content tower (``training.content_model``) after SASS, and the pipeline step that
adds it to a model artifact.

Targets: for every warm item (in the SASS catalogue of a scenario *and* in the item catalogue), its
SASS item vector in that scenario.  Loss: InfoNCE over single-scenario batches -- a content vector's
positive is its own item's SASS vector, the batch's other items' vectors are its negatives (both
directions).  Nothing but the catalogue content and the SASS vectors goes in: no click, so no
test-period event can leak through it beyond what SASS itself was trained on.

``train_content`` (the retrain DAG's step after fine-tuning, before evaluation and registration)
writes the tower next to the SASS files of the artifact and appends, per scenario, the catalogue
items SASS never saw with their content vectors, so the next bundle serves them.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from sassflow.contracts.artifacts import ModelArtifact, ScenarioItems
from sassflow.contracts.catalog import ItemEvent, item_from_row
from training.content_model import ContentBatch, ContentConfig, ContentTower, featurize, save_content_tower
from training.trainer import History, TrainConfig, _run, scenario_batches


def content_config(settings, scenarios: list[str], dim: int, image: bool | None = None) -> ContentConfig:
    cs = settings.content
    return ContentConfig(scenarios=list(scenarios), dim=dim, text_buckets=cs.text_buckets,
                         tag_buckets=cs.tag_buckets, hidden_dim=cs.hidden_dim,
                         image=cs.image if image is None else image)


def warm_pairs(items: list[ItemEvent], targets: dict[str, ScenarioItems], scenarios: list[str]):
    """(catalogue row, scenario index, target vector) of every item with a SASS vector in a scenario."""
    row_of = {it.item_id: r for r, it in enumerate(items)}
    rows, scen, vecs = [], [], []
    for k, name in enumerate(scenarios):
        t = targets.get(name)
        if t is None:
            continue
        for j, raw in enumerate(t.item_ids.tolist()):
            r = row_of.get(raw)
            if r is not None:
                rows.append(r)
                scen.append(k)
                vecs.append(t.vectors[j])
    dim = next(iter(targets.values())).vectors.shape[1] if targets else 0
    return (np.asarray(rows, np.int64), np.asarray(scen, np.int64),
            np.asarray(vecs, np.float32).reshape(-1, dim))


def fit_content_tower(items: list[ItemEvent], targets: dict[str, ScenarioItems], cfg: ContentConfig,
                      settings, seed: int = 0, progress: bool = True) -> tuple[ContentTower, History]:
    """Train a content tower on the warm items (``warm_pairs``)."""
    cs = settings.content
    torch.manual_seed(seed)
    tower = ContentTower(cfg)
    history = History()
    rows, scen, vecs = warm_pairs(items, targets, cfg.scenarios)
    if len(rows) < 2:
        raise ValueError(f"{len(rows)} warm items have both content and a SASS vector: nothing to align")
    batch: ContentBatch = featurize(items, cfg)
    target = F.normalize(torch.from_numpy(vecs), dim=-1)
    rows_t, scen_t = torch.from_numpy(rows), torch.from_numpy(scen)

    def step(idx):
        c = tower(batch.take(rows_t[idx]), scen_t[idx])
        logits = c @ target[idx].T / cs.temperature
        labels = torch.arange(len(idx))
        return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))

    run_cfg = TrainConfig(pretrain_epochs=0, finetune_epochs=cs.epochs, batch_size=cs.batch_size,
                          pretrain_batch_size=cs.batch_size, learning_rate=cs.learning_rate,
                          temperature=cs.temperature, global_loss_weight=0.0, seed=seed, progress=progress)
    _run(tower, lambda rng: scenario_batches(scen, cs.batch_size, rng), step, run_cfg, history, "content",
         cs.epochs)
    return tower, history


# --------------------------------------------------------------------------- sharing an index with SASS

BLENDS = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1)  # tried in this order; never 0: new items keep their order


def recall_with_extra_items(model, data, extra: list[np.ndarray], split: str) -> dict:
    """``training.evaluate.evaluate`` of the SASS model on ``split`` with ``extra[k]`` (vectors of
    items that are never a target) added to scenario k's catalogue: how much they crowd the list."""
    from dataclasses import replace

    from training.evaluate import evaluate
    from training.trainer import to_torch

    first = len(data.items) + 1  # extra items get column ids from here on
    catalogs = [np.r_[c, first + np.arange(len(v))] for c, v in zip(data.catalogs, extra)]

    @torch.no_grad()
    def score(k, queries, catalog):
        model.eval()
        u, _ = model.encode_user(to_torch(queries))
        warm = torch.from_numpy(catalog[catalog < first])
        v, _ = model.encode_item(warm, torch.full_like(warm, k))
        return u @ torch.cat([v, torch.from_numpy(np.asarray(extra[k], np.float32))]).T

    return evaluate(score, replace(data, catalogs=catalogs), split)


def calibrate_blend(model, data, items: list[ItemEvent], targets: dict[str, ScenarioItems], cfg: ContentConfig,
                    settings, share: float = 0.1, seed: int = 0) -> tuple[float, list, dict]:
    """The largest ``blend`` (``BLENDS``; see ``ContentConfig``) at which new items cost the warm
    items at most ``settings.content.warm_tolerance`` of their validation recall@50.  Anchors: each
    scenario's mean SASS item vector.  Stand-ins for new items: a ``share`` of each scenario's warm
    items, encoded by a tower trained *without* them (a tower's vectors of items it was fitted to
    are sharper than those of items it never saw); their own SASS rows stay, so the stand-ins only
    crowd.  Returns (blend, anchors, {blend: val recall@50 mean, "base": ...})."""
    from dataclasses import replace

    from training.evaluate import evaluate, model_scorer

    base = evaluate(model_scorer(model), data, "val")["recall@50"]["mean"]
    anchors = [targets[name].vectors.mean(0).astype(np.float32) for name in cfg.scenarios]
    by_id = {it.item_id: it for it in items}
    rng = np.random.default_rng(seed)
    chosen = {}
    for k, name in enumerate(data.scenarios):
        raw = [i for i in data.items.ids[data.catalogs[k] - 1].tolist() if i in by_id]
        chosen[name] = [int(i) for i in rng.permutation(raw)[: max(1, int(share * len(raw)))]] if raw else []
    rest = {}
    for name, t in targets.items():
        keep = ~np.isin(t.item_ids, chosen.get(name, []))
        rest[name] = ScenarioItems(t.item_ids[keep], t.vectors[keep], t.popular)
    tower, _ = fit_content_tower(items, rest, replace(cfg, blend=1.0), settings, seed, progress=False)
    stand_ins = [tower.encode([by_id[i] for i in chosen[name]], name) for name in data.scenarios]
    tried = {"base": base}
    for blend in BLENDS:
        extra = [blend * v + (1 - blend) * anchors[k] for k, v in enumerate(stand_ins)]
        tried[blend] = recall_with_extra_items(model, data, extra, "val")["recall@50"]["mean"]
        if tried[blend] >= (1 - settings.content.warm_tolerance) * base:
            return blend, [a.tolist() for a in anchors], tried
    return BLENDS[-1], [a.tolist() for a in anchors], tried


# --------------------------------------------------------------------------- the pipeline step

def catalog_items(settings, dataset_dir=None) -> list[ItemEvent]:
    """The item catalogue: a MovieLens-format folder's movies, else the offline catalogue history."""
    from sassflow.settings import is_dataset_folder

    if dataset_dir is not None and is_dataset_folder(dataset_dir):
        from sassflow.datasets import Dataset
        from streaming.catalog import movielens_catalog

        return list(movielens_catalog(Dataset(dataset_dir, settings.data.find_scenarios_file(Path(dataset_dir)))))
    from streaming.catalog import read_catalog

    df = read_catalog(settings.streaming.offline_dir)
    return [item_from_row(r) for r in df.to_dict("records")]


def _sass_targets(artifact: ModelArtifact, scenarios: list[str]) -> dict[str, ScenarioItems]:
    """Each scenario's SASS rows (without cold items a previous run of this step appended)."""
    counts = {}
    path = artifact.root / ModelArtifact.CONTENT_CONFIG
    if path.exists():
        counts = json.loads(path.read_text()).get("sass_items", {})
    out = {}
    for s in scenarios:
        it = artifact.read_scenario(s)
        n = counts.get(s, len(it.item_ids))
        out[s] = ScenarioItems(it.item_ids[:n], it.vectors[:n], it.popular)
    return out


def cold_items(items: list[ItemEvent], known: np.ndarray, scenario: str, scenarios: list[str]) -> list[ItemEvent]:
    """Catalogue items shown in ``scenario`` that are not among ``known`` raw ids."""
    known_set = set(known.tolist())
    return [it for it in items if it.item_id not in known_set and scenario in it.shown_in(scenarios)]


def train_content(settings, dataset_dir, model_dir, items: list[ItemEvent] | None = None,
                  progress: bool = True, data=None) -> dict:
    """Train the content tower for the SASS artifact in ``model_dir``, calibrate its vectors' blend
    on the validation split of ``data`` (the prepared training data; without it the blend stays 1)
    and add it, with the cold catalogue items' content vectors, to that artifact (idempotent: a re-run
    replaces both).  ``dataset_dir`` names the catalogue (``catalog_items``) when ``items`` is None."""
    if not settings.content.enabled:
        return {"content": False, "reason": "settings.content.enabled is false"}
    t0 = time.perf_counter()
    artifact = ModelArtifact(model_dir)
    config = artifact.read_config()
    scenarios = config["scenarios"]
    items = catalog_items(settings, dataset_dir) if items is None else items
    if not items:
        return {"content": False, "reason": "the item catalogue is empty"}
    targets = _sass_targets(artifact, scenarios)
    cfg = content_config(settings, scenarios, int(config["dim"]), image=settings.content.image and any(
        it.image for it in items))
    tower, history = fit_content_tower(items, targets, cfg, settings, settings.training.seed, progress)
    calibration = _calibrate(settings, model_dir, data, tower, items, targets)
    added = {}
    for s in scenarios:
        t = targets[s]
        cold = cold_items(items, t.item_ids, s, scenarios)
        vecs = tower.encode(cold, s)
        ids = np.asarray([it.item_id for it in cold], np.int64)
        artifact.write_scenario(s, ScenarioItems(np.r_[t.item_ids, ids], np.r_[t.vectors, vecs], t.popular))
        added[s] = len(cold)
    save_content_tower(tower, model_dir, {"sass_items": {s: int(len(targets[s].item_ids)) for s in scenarios},
                                          "catalogue_items": len(items), "calibration": calibration})
    losses = history.losses.get("content", [])
    return {"content": True, "catalogue_items": len(items), "cold_items_added": added,
            "image": cfg.image, "blend": tower.cfg.blend, "calibration": calibration,
            "final_loss": float(np.mean(losses[-10:])) if losses else None, "seconds": time.perf_counter() - t0}


def _calibrate(settings, model_dir, data, tower: ContentTower, items, targets) -> dict:
    """Set ``tower.cfg.blend`` on the validation split when there is one; returns what was tried."""
    from training.export import load_model

    if data is None or "val" not in data.evals:
        return {"calibrated": False, "reason": "no validation data"}
    model, _ = load_model(model_dir)
    tower.cfg.blend, tower.cfg.anchors, tried = calibrate_blend(model, data, items, targets, tower.cfg, settings,
                                                                seed=settings.training.seed)
    return {"calibrated": True, "val_recall@50": {str(k): v for k, v in tried.items()}}

