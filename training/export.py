"""Artifacts for serving, and the user encoder serving runs on Feast online rows.

``export_artifacts`` writes, in one folder:
``model.pt`` (state_dict only), ``config.json`` (everything needed to rebuild the model),
``user_ids.npy`` / ``item_ids.npy`` (raw-id vocabularies, int64; index i+1 <-> ids[i], 0 = OOV),
and per scenario ``items_<s>.npy`` (raw ids of the scenario's catalog),
``item_vectors_<s>.npy`` (float32 [n, d], L2-normalised: serve by inner product) and
``popular_<s>.npy`` (raw ids by training click count, descending).

``load_user_encoder`` only ever loads with ``torch.load(weights_only=True)`` and checks every
tensor's shape against ``config.json``; anything wrong raises ``ArtifactError``.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from sassflow.files import sha256_file
from training.model import SASS, ModelConfig

FORMAT_VERSION = 1


class ArtifactError(RuntimeError):
    """A model artifact folder that is missing, corrupt or does not match its config."""


@torch.no_grad()
def export_artifacts(model: SASS, out_dir, data=None, scenarios: list[str] | None = None,
                     user_ids: np.ndarray | None = None, item_ids: np.ndarray | None = None,
                     catalogs: list[np.ndarray] | None = None, item_clicks: np.ndarray | None = None,
                     seq_len: int = 20, extra: dict | None = None) -> dict:
    """Write the serving artifacts of ``model``. Vocabularies and catalogs come from ``data``
    (a ``TrainingData``) unless given explicitly. Returns {file name: sha256}."""
    if data is None and user_ids is None:
        raise ValueError("export_artifacts needs the training data (vocabularies, catalogs)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if data is not None:
        scenarios, user_ids, item_ids = data.scenarios, data.users.ids, data.items.ids
        catalogs, item_clicks, seq_len = data.catalogs, data.item_clicks, data.seq_len
    model.eval()
    torch.save(model.state_dict(), out / "model.pt")
    cfg = {"format_version": FORMAT_VERSION, "kind": model.cfg.kind, "model": model.cfg.to_dict(),
           "scenarios": list(scenarios), "seq_len": seq_len, "dim": model.cfg.dim,
           "n_users": model.cfg.n_users, "n_items": model.cfg.n_items, "normalized": True,
           **(extra or {})}
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    np.save(out / "user_ids.npy", np.asarray(user_ids, np.int64))
    np.save(out / "item_ids.npy", np.asarray(item_ids, np.int64))
    for k, name in enumerate(scenarios):
        cat = np.asarray(catalogs[k], np.int64)  # vocabulary indices
        v, _ = model.encode_item(torch.from_numpy(cat), torch.full((len(cat),), k, dtype=torch.long))
        raw = np.asarray(item_ids, np.int64)[cat - 1] if len(cat) else np.zeros(0, np.int64)
        np.save(out / f"items_{name}.npy", raw)
        np.save(out / f"item_vectors_{name}.npy", v.numpy().astype(np.float32))
        clicks = item_clicks[k, cat] if item_clicks is not None else np.zeros(len(cat))
        order = np.argsort(-clicks, kind="stable")
        np.save(out / f"popular_{name}.npy", raw[order[clicks[order] > 0]])
    return {p.name: sha256_file(p) for p in sorted(out.iterdir()) if p.is_file()}


def load_model(artifact_dir) -> tuple[SASS, dict]:
    """Rebuild the model from ``config.json`` and load ``model.pt`` safely."""
    d = Path(artifact_dir)
    try:
        cfg = json.loads((d / "config.json").read_text())
        mcfg = ModelConfig(**cfg["model"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ArtifactError(f"{d}: unreadable config.json ({exc})") from exc
    try:
        state = torch.load(d / "model.pt", map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types on a damaged zip / pickle
        raise ArtifactError(f"{d / 'model.pt'}: cannot load state_dict ({type(exc).__name__}: {exc})") from exc
    model = SASS(mcfg)
    expected = model.state_dict()
    if not isinstance(state, dict) or set(state) != set(expected):
        missing = sorted(set(expected) - set(state or {}))[:3]
        raise ArtifactError(f"{d / 'model.pt'}: tensors do not match config.json (missing {missing})")
    for k, v in expected.items():
        if not isinstance(state[k], torch.Tensor) or state[k].shape != v.shape:
            raise ArtifactError(f"{d / 'model.pt'}: {k} has shape {tuple(getattr(state[k], 'shape', ()))}, "
                                f"config.json says {tuple(v.shape)}")
    model.load_state_dict(state)
    model.eval()
    return model, cfg


class UserEncoder:
    """Feast online rows -> user vectors of one scenario (float32 [B, d])."""

    def __init__(self, model: SASS, config: dict, user_ids: np.ndarray, item_ids: np.ndarray):
        from training.data import Vocab

        self.model, self.config = model, config
        self.scenarios: list[str] = config["scenarios"]
        self.seq_len: int = config["seq_len"]
        self.dim: int = config["dim"]
        self.users, self.items = Vocab(user_ids), Vocab(item_ids)

    def _seq(self, rows, name) -> np.ndarray:
        out = np.zeros((len(rows), self.seq_len), np.int64)
        for r, row in enumerate(rows):
            seq = row.get(name) or []
            seq = [x for x in list(seq)[: self.seq_len] if x is not None]
            if seq:
                out[r, : len(seq)] = self.items.index(np.asarray(seq, np.int64))  # unknown -> 0 = padding
        return out

    @torch.no_grad()
    def encode(self, rows: list[dict], scenario: str) -> np.ndarray:
        if scenario not in self.scenarios:
            raise ValueError(f"unknown scenario {scenario!r}; the model knows {self.scenarios}")
        S, B = len(self.scenarios), len(rows)
        share = np.zeros((B, S), np.float32)
        for r, row in enumerate(rows):
            v = row.get("scenario_click_share")
            if v is not None and len(v) == S:
                share[r] = [0.0 if x is None else float(x) for x in v]
        uid = np.asarray([row.get("user_id") if row.get("user_id") is not None else -1 for row in rows],
                         np.int64)
        f = {"user": torch.from_numpy(self.users.index(uid)),
             "scenario": torch.full((B,), self.scenarios.index(scenario), dtype=torch.long),
             "recent_clicks": torch.from_numpy(self._seq(rows, "recent_clicks")),
             "recent_clicks_all": torch.from_numpy(self._seq(rows, "recent_clicks_all")),
             "scenario_click_share": torch.from_numpy(share)}
        u, _ = self.model.encode_user(f)
        return u.numpy().astype(np.float32)


def load_user_encoder(artifact_dir) -> UserEncoder:
    d = Path(artifact_dir)
    model, cfg = load_model(d)
    try:
        user_ids = np.load(d / "user_ids.npy", allow_pickle=False)
        item_ids = np.load(d / "item_ids.npy", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{d}: unreadable vocabulary ({exc})") from exc
    if len(user_ids) != cfg["n_users"] or len(item_ids) != cfg["n_items"]:
        raise ArtifactError(f"{d}: vocabulary sizes {len(user_ids)}/{len(item_ids)} != config "
                            f"{cfg['n_users']}/{cfg['n_items']}")
    return UserEncoder(model, cfg, user_ids, item_ids)
