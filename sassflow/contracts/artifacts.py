"""Where the files of a trained model and of a serving bundle live.

Training writes a model artifact (``ModelArtifact``); serving builds an immutable bundle from it
and reads the bundle back (``BundleLayout``).  Both sides go through these classes only, so the
layout is declared once and nothing parses another module's file names.

Model artifact::

    config.json                 everything needed to rebuild the model (incl. "kind", "scenarios")
    model.pt                    state_dict only (loaded with weights_only=True)
    user_ids.npy, item_ids.npy  raw-id vocabularies, int64; index i+1 <-> ids[i], 0 = out of vocabulary
    scenarios/<s>/item_ids.npy  raw ids of scenario s's catalog
    scenarios/<s>/vectors.npy   float32 [n, d] item vectors of scenario s, row i = item_ids[i]
    scenarios/<s>/popular.npy   raw ids by training click count, descending
    content_config.json         optional: the content tower (training.content_model) config, and
    content_model.pt            its state_dict; with it, scenarios/<s>/ also holds catalogue items
                                the SASS model never saw, with their content vectors (cold start)

Serving bundle (``<bundle_dir>/<bundle_id>/``)::

    manifest.json               bundle id, model version, per-scenario counts and index specs,
                                sha256 + size of every other file
    tower/                      the artifact's tower files (config.json, model.pt, vocabularies,
                                and the content tower's two files when the model has one)
    <s>/index.faiss             the scenario's index, row i = item_ids[i]
    <s>/item_ids.npy            raw item ids, int64
    <s>/popular.npy             raw item ids by popularity (cold-start fallback)
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class ScenarioItems:
    """One scenario's catalog as training exports it."""

    item_ids: np.ndarray  # int64 [n]
    vectors: np.ndarray  # float32 [n, d]
    popular: np.ndarray  # int64, by popularity


class ModelArtifact:
    """The folder of one trained model."""

    CONFIG = "config.json"
    STATE = "model.pt"
    USER_IDS = "user_ids.npy"
    ITEM_IDS = "item_ids.npy"
    TOWER_FILES = (CONFIG, STATE, USER_IDS, ITEM_IDS)  # what the request-time user tower needs
    CONTENT_CONFIG = "content_config.json"
    CONTENT_STATE = "content_model.pt"
    CONTENT_FILES = (CONTENT_CONFIG, CONTENT_STATE)  # the content tower: serving encodes new items with it
    _SCENARIOS = "scenarios"
    _SCENARIO_ARRAYS = ("item_ids", "vectors", "popular")

    def __init__(self, root):
        self.root = Path(root)

    @property
    def state_path(self) -> Path:
        return self.root / self.STATE

    def write_config(self, config: dict) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / self.CONFIG).write_text(json.dumps(config, indent=2))

    def read_config(self) -> dict:
        return json.loads((self.root / self.CONFIG).read_text())

    def write_vocab(self, user_ids: np.ndarray, item_ids: np.ndarray) -> None:
        np.save(self.root / self.USER_IDS, np.asarray(user_ids, np.int64))
        np.save(self.root / self.ITEM_IDS, np.asarray(item_ids, np.int64))

    def read_vocab(self) -> tuple[np.ndarray, np.ndarray]:
        return (np.load(self.root / self.USER_IDS, allow_pickle=False),
                np.load(self.root / self.ITEM_IDS, allow_pickle=False))

    def write_scenario(self, scenario: str, items: ScenarioItems) -> None:
        folder = self.root / self._SCENARIOS / scenario
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / "item_ids.npy", np.asarray(items.item_ids, np.int64))
        np.save(folder / "vectors.npy", np.asarray(items.vectors, np.float32))
        np.save(folder / "popular.npy", np.asarray(items.popular, np.int64))

    def read_scenario(self, scenario: str) -> ScenarioItems:
        folder = self.root / self._SCENARIOS / scenario
        missing = [f"{a}.npy" for a in self._SCENARIO_ARRAYS if not (folder / f"{a}.npy").exists()]
        if missing:
            raise FileNotFoundError(f"artifact {self.root} has no {', '.join(missing)} for scenario {scenario!r}")
        return ScenarioItems(*(np.load(folder / f"{a}.npy", allow_pickle=False) for a in self._SCENARIO_ARRAYS))

    def tower_files(self) -> dict[str, Path]:
        """What a bundle's tower folder gets: the user tower, and the content tower when there is one."""
        names = self.TOWER_FILES + (self.CONTENT_FILES if self.has_content() else ())
        return {name: self.root / name for name in names}

    def has_content(self) -> bool:
        return all((self.root / name).exists() for name in self.CONTENT_FILES)


class BundleLayout:
    """The folder of one serving bundle, and the pointer files of the bundle directory."""

    MANIFEST = "manifest.json"
    TOWER = "tower"
    INDEX = "index.faiss"
    ITEM_IDS = "item_ids.npy"
    POPULAR = "popular.npy"
    SCENARIO_FILES = (INDEX, ITEM_IDS, POPULAR)
    CURRENT = "CURRENT"  # in the bundle directory: the id of the bundle to serve
    HISTORY = "HISTORY"  # in the bundle directory: published ids, oldest first

    def __init__(self, root):
        self.root = Path(root)

    @property
    def manifest_path(self) -> Path:
        return self.root / self.MANIFEST

    @property
    def tower_dir(self) -> Path:
        return self.root / self.TOWER

    def scenario_dir(self, scenario: str) -> Path:
        return self.root / scenario

    def scenario_file(self, scenario: str, name: str) -> str:
        """The manifest key (relative posix path) of one per-scenario file."""
        return f"{scenario}/{name}"
