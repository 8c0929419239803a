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

    manifest.json               ``BundleManifest``: bundle id, model version, per-scenario counts
                                and index specs, sha256 + size of every other file
    tower/                      the artifact's tower files (config.json, model.pt, vocabularies,
                                and the content tower's two files when the model has one)
    <s>/index.faiss             the scenario's index, row i = item_ids[i] (index.hnsw: an hnswlib index,
                                when the manifest's index spec says backend "hnswlib")
    <s>/item_ids.npy            raw item ids, int64
    <s>/popular.npy             raw item ids by popularity (cold-start fallback)
    ranking/                    optional: the rankers (``RankerArtifact`` files), when the gate kept them;
                                the manifest's ``ranking`` section says whether they are in and why

Ranker artifact (``RankerArtifact``, trained after the recall model on the same window)::

    config.json                 the ranker config (``training.rankers.RankerConfig``), whether a fine
                                ranker is present, its metrics and the gate's decision
    coarse.pt, fine.pt          state_dicts (loaded with weights_only=True)
    item_ids.npy                raw-id vocabulary of the item embeddings, int64
    item_clicks.npy             training clicks per scenario and item (the popularity prior), int64
    co_clicks.npz               the item-to-item co-click table (``training.co_click``); absent: none

A bundle id, a scenario folder and every path in the manifest are plain names checked by the
patterns below, so nothing a manifest or a pointer file says can lead outside the bundle.  A new
optional part of a bundle (a section, a per-scenario field, a file) is declared here: a field of
``BundleManifest`` / ``ScenarioEntry``, and its file name on ``BundleLayout``.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal, Union

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator


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


class RankerArtifact:
    """The folder of the trained rankers (coarse + fine) of one retrain."""

    CONFIG = "config.json"
    COARSE = "coarse.pt"
    FINE = "fine.pt"
    ITEM_IDS = "item_ids.npy"
    ITEM_CLICKS = "item_clicks.npy"  # int64 [n_scenarios, n_items + 1]: training clicks by vocabulary index
    CO_CLICKS = "co_clicks.npz"  # keys int64 + weights float32 (training.co_click.CoClicks)
    FILES = (CONFIG, COARSE, FINE, ITEM_IDS, ITEM_CLICKS, CO_CLICKS)

    def __init__(self, root):
        self.root = Path(root)

    def files(self) -> dict[str, Path]:
        """The files present (a ranker without a fine model has no ``fine.pt``)."""
        return {name: self.root / name for name in self.FILES if (self.root / name).exists()}


class BundleLayout:
    """The folder of one serving bundle, and the pointer files of the bundle directory."""

    MANIFEST = "manifest.json"
    TOWER = "tower"
    RANKING = "ranking"  # optional: the rankers' files (RankerArtifact layout)
    INDEX = "index.faiss"
    INDEX_HNSWLIB = "index.hnsw"
    ITEM_IDS = "item_ids.npy"
    POPULAR = "popular.npy"
    CURRENT = "CURRENT"  # in the bundle directory: the id of the bundle to serve
    HISTORY = "HISTORY"  # in the bundle directory: published ids, oldest first
    # A bundle id: a plain folder name (what ``serving.bundle.new_bundle_id`` makes); never ".", ".."
    # or hidden (the builder's temp folders start with a dot), never a path.
    ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}"
    SCENARIO_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"  # a scenario's folder name
    # A path in the manifest: relative, normalised, '/'-separated plain names (no "", ".", "..").
    FILE_PATTERN = r"(?:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}/){0,3}[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
    MAX_MANIFEST_BYTES = 1 << 20  # a manifest lists a few dozen files; anything bigger is not one
    MAX_POINTER_BYTES = 4096  # CURRENT holds one id

    @classmethod
    def is_bundle_id(cls, name: str) -> bool:
        return isinstance(name, str) and re.fullmatch(cls.ID_PATTERN, name) is not None

    @classmethod
    def index_file(cls, spec: dict) -> str:
        """The file name of a scenario's index: hnswlib graphs have their own format."""
        return cls.INDEX_HNSWLIB if spec.get("backend") == "hnswlib" else cls.INDEX

    @classmethod
    def scenario_files(cls, spec: dict) -> tuple[str, ...]:
        """The files of one scenario whose index follows ``spec``."""
        return (cls.index_file(spec), cls.ITEM_IDS, cls.POPULAR)

    @classmethod
    def required_files(cls, scenarios: dict) -> list[str]:
        """The manifest keys a bundle serving ``scenarios`` ({name: entry with "index"}) cannot do without."""
        return [f"{cls.TOWER}/{ModelArtifact.CONFIG}"] + [
            f"{s}/{name}" for s, entry in scenarios.items() for name in cls.scenario_files(_as_dict(entry)["index"])]

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

    @property
    def ranking_dir(self) -> Path:
        return self.root / self.RANKING

    def scenario_file(self, scenario: str, name: str) -> str:
        """The manifest key (relative posix path) of one per-scenario file."""
        return f"{scenario}/{name}"


def _as_dict(entry) -> dict:
    return entry.model_dump() if hasattr(entry, "model_dump") else entry


# ---------------------------------------------------------------- the manifest's schema

_STRICT = ConfigDict(extra="forbid", strict=True, frozen=True)
BundleId = Annotated[str, StringConstraints(pattern=f"^{BundleLayout.ID_PATTERN}$")]
ScenarioName = Annotated[str, StringConstraints(pattern=f"^{BundleLayout.SCENARIO_PATTERN}$")]
BundleFile = Annotated[str, StringConstraints(pattern=f"^{BundleLayout.FILE_PATTERN}$")]
Positive = Annotated[int, Field(ge=1)]


class FlatIndex(BaseModel):
    model_config = _STRICT
    type: Literal["flat"]


class HnswIndex(BaseModel):
    model_config = _STRICT
    type: Literal["hnsw"]
    backend: Literal["faiss", "hnswlib"] = "faiss"  # which library built the graph (file: BundleLayout.index_file)
    m: Positive
    ef_construction: Positive
    ef_search: Positive


class IvfIndex(BaseModel):
    model_config = _STRICT
    type: Literal["ivf"]
    nlist: Positive
    nprobe: Positive


IndexSpec = Annotated[Union[FlatIndex, HnswIndex, IvfIndex], Field(discriminator="type")]


class FileEntry(BaseModel):
    model_config = _STRICT
    sha256: Annotated[str, StringConstraints(pattern="^[0-9a-f]{64}$")]
    bytes: Annotated[int, Field(ge=0)]


class ScenarioEntry(BaseModel):
    model_config = _STRICT
    count: Positive  # items in the index
    index: IndexSpec
    popular: Positive  # items in popular.npy


class RankingEntry(BaseModel):
    """The manifest's ``ranking`` section: whether the bundle ranks its candidates, and why (or why not).

    ``included`` false: the rankers were left out (the gate found they do not beat the recall order on
    validation, or none were trained) and ``/recommend`` returns the recall order; ``reason`` says why."""

    model_config = _STRICT
    included: bool
    reason: Annotated[str, StringConstraints(max_length=500)]
    fine: bool = False  # a fine ranker behind the coarse one
    metrics: dict[str, float] = {}  # validation figures the gate decided on

    @model_validator(mode="after")
    def _fine_needs_rankers(self) -> "RankingEntry":
        if self.fine and not self.included:
            raise ValueError("fine: a bundle without rankers has no fine ranker")
        return self


class BundleManifest(BaseModel):
    """``manifest.json``: what the bundle holds and the checksum of every other file in it."""

    model_config = _STRICT
    format: Literal[1]
    bundle_id: BundleId
    model_version: int | str
    created_at: str
    kind: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    dim: Positive
    scenarios: Annotated[dict[ScenarioName, ScenarioEntry], Field(min_length=1)]
    files: dict[BundleFile, FileEntry]
    ranking: RankingEntry | None = None  # absent: a bundle built before rankers existed (recall order)

    @model_validator(mode="after")
    def _lists_what_it_needs(self) -> "BundleManifest":
        if BundleLayout.MANIFEST in self.files:
            raise ValueError(f"files: {BundleLayout.MANIFEST} cannot list itself")
        required = BundleLayout.required_files(self.scenarios)
        if self.ranking is not None and self.ranking.included:
            required += [f"{BundleLayout.RANKING}/{name}" for name in
                         (RankerArtifact.CONFIG, RankerArtifact.COARSE, RankerArtifact.ITEM_IDS,
                          RankerArtifact.ITEM_CLICKS)
                         + ((RankerArtifact.FINE,) if self.ranking.fine else ())]
        missing = [f for f in required if f not in self.files]
        if missing:
            raise ValueError(f"files: no entry for {', '.join(missing[:3])}")
        return self
