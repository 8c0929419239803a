"""A trained model as a model artifact (layout: ``sassflow.contracts.artifacts.ModelArtifact``), and
the model rebuilt from one.

``export_artifacts`` writes the state_dict, the config needed to rebuild the model, the raw-id
vocabularies and, per scenario, the catalog's item vectors and popularity order.  ``load_model``
only ever loads with ``torch.load(weights_only=True)`` and checks every tensor's shape against the
config; anything wrong raises ``ArtifactError``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from sassflow.contracts.artifacts import ModelArtifact, ScenarioItems
from sassflow.contracts.features import SEQ_LEN
from sassflow.files import sha256_file
from training.model import SASS, ModelConfig

FORMAT_VERSION = 2  # 2: per-scenario arrays under scenarios/<s>/ (ModelArtifact)


class ArtifactError(RuntimeError):
    """A model artifact folder that is missing, corrupt or does not match its config."""


@torch.no_grad()
def export_artifacts(model: SASS, out_dir, data=None, scenarios: list[str] | None = None,
                     user_ids: np.ndarray | None = None, item_ids: np.ndarray | None = None,
                     catalogs: list[np.ndarray] | None = None, item_clicks: np.ndarray | None = None,
                     seq_len: int = SEQ_LEN, extra: dict | None = None) -> dict:
    """Write the artifact of ``model``. Vocabularies and catalogs come from ``data`` (a
    ``TrainingData``) unless given explicitly. Returns {relative file path: sha256}."""
    if data is None and user_ids is None:
        raise ValueError("export_artifacts needs the training data (vocabularies, catalogs)")
    artifact = ModelArtifact(out_dir)
    if data is not None:
        scenarios, user_ids, item_ids = data.scenarios, data.users.ids, data.items.ids
        catalogs, item_clicks, seq_len = data.catalogs, data.item_clicks, data.seq_len
    model.eval()
    artifact.write_config({"format_version": FORMAT_VERSION, "kind": model.cfg.kind, "model": model.cfg.to_dict(),
                           "scenarios": list(scenarios), "seq_len": seq_len, "dim": model.cfg.dim,
                           "n_users": model.cfg.n_users, "n_items": model.cfg.n_items, "normalized": True,
                           **(extra or {})})
    torch.save(model.state_dict(), artifact.state_path)
    artifact.write_vocab(user_ids, item_ids)
    for k, name in enumerate(scenarios):
        cat = np.asarray(catalogs[k], np.int64)  # vocabulary indices
        v, _ = model.encode_item(torch.from_numpy(cat), torch.full((len(cat),), k, dtype=torch.long))
        raw = np.asarray(item_ids, np.int64)[cat - 1] if len(cat) else np.zeros(0, np.int64)
        clicks = item_clicks[k, cat] if item_clicks is not None else np.zeros(len(cat))
        order = np.argsort(-clicks, kind="stable")
        artifact.write_scenario(name, ScenarioItems(raw, v.numpy().astype(np.float32), raw[order[clicks[order] > 0]]))
    root = Path(out_dir)
    return {p.relative_to(root).as_posix(): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()}


def load_model(artifact_dir) -> tuple[SASS, dict]:
    """Rebuild the model from the artifact's config and load its state_dict safely."""
    artifact = ModelArtifact(artifact_dir)
    try:
        cfg = artifact.read_config()
        mcfg = ModelConfig(**cfg["model"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ArtifactError(f"{artifact.root}: unreadable {ModelArtifact.CONFIG} ({exc})") from exc
    model = load_state_into(SASS(mcfg), artifact.state_path, ModelArtifact.CONFIG)
    return model, cfg


def load_state_into(model: torch.nn.Module, state_path: Path, config_name: str) -> torch.nn.Module:
    """Load the state_dict at ``state_path`` into ``model`` (built from ``config_name``) safely: with
    ``weights_only=True``, every tensor present and shaped as the config says; returns it in eval mode."""
    try:
        state = torch.load(state_path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types on a damaged zip / pickle
        raise ArtifactError(f"{state_path}: cannot load state_dict ({type(exc).__name__}: {exc})") from exc
    expected = model.state_dict()
    if not isinstance(state, dict) or set(state) != set(expected):
        missing = sorted(set(expected) - set(state or {}))[:3]
        raise ArtifactError(f"{state_path}: tensors do not match {config_name} (missing {missing})")
    for k, v in expected.items():
        if not isinstance(state[k], torch.Tensor) or state[k].shape != v.shape:
            raise ArtifactError(f"{state_path}: {k} has shape {tuple(getattr(state[k], 'shape', ()))}, "
                                f"{config_name} says {tuple(v.shape)}")
    model.load_state_dict(state)
    return model.eval()


def load_vocab(artifact_dir, cfg: dict) -> tuple[np.ndarray, np.ndarray]:
    """The raw-id vocabularies of an artifact, checked against its config."""
    artifact = ModelArtifact(artifact_dir)
    try:
        user_ids, item_ids = artifact.read_vocab()
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{artifact.root}: unreadable vocabulary ({exc})") from exc
    if len(user_ids) != cfg["n_users"] or len(item_ids) != cfg["n_items"]:
        raise ArtifactError(f"{artifact.root}: vocabulary sizes {len(user_ids)}/{len(item_ids)} != config "
                            f"{cfg['n_users']}/{cfg['n_items']}")
    return user_ids, item_ids
