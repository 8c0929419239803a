"""Reading a serving bundle back: everything that decides whether a bundle may be served.

A bundle is accepted only when all of these hold (``load_bundle``), else ``BundleError`` says why:

1. its folder is a plain bundle id inside the bundle dir, a real folder (not a symlink);
2. ``manifest.json`` is a regular file that validates against ``BundleManifest`` (the schema in
   ``sassflow.contracts.artifacts``: every path relative, normalised, inside the bundle) and names
   this folder;
3. every file on disk is a regular file listed in the manifest (no symlink, no extra file), every
   listed file is there, with its size and SHA-256 (read without following symlinks);
4. each scenario's index, ids and popular items agree with the manifest and with each other, and
   every item vector is finite;
5. the user tower loads, its weights are finite, and a smoke query for real users of the bundle
   (ids from the tower's vocabulary, a plausible click history) gives finite vectors and non-empty
   answers in every scenario;
6. when the manifest says the bundle ranks (``ranking.included``), its rankers load, their weights
   are finite, and they give finite scores to the smoke users' candidates in every scenario.

Refusal reasons name the bundle and paths inside it only, never a filesystem path: they are shown
by the unauthenticated ``/version``.
"""
from __future__ import annotations

import hashlib
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import ValidationError

from sassflow.contracts.artifacts import BundleLayout, BundleManifest, ModelArtifact
from sassflow.settings import Settings
from serving.index import ScenarioCatalog, read_index, vectors_finite

MANIFEST = BundleLayout.MANIFEST
SMOKE_USERS = 8  # users per scenario in the load-time smoke query


class BundleError(Exception):
    """A bundle that is missing, corrupt or does not match this service."""


def scrub(message: str, root: Path) -> str:
    """``message`` without the bundle's absolute path (and short): library errors quote paths."""
    root = Path(root)
    text = str(message).replace(str(root.parent) + os.sep, "").replace(str(root.parent), "<bundle_dir>")
    return text if len(text) <= 300 else text[:300] + "…"


def describe_errors(exc: ValidationError, limit: int = 3) -> str:
    """Pydantic errors in one short line, without the offending values."""
    parts = []
    for e in exc.errors(include_input=False, include_url=False)[:limit]:
        loc = ".".join(str(p)[:40] for p in e["loc"] if p != "[key]")
        msg = "is not a plain relative name" if e["type"] == "string_pattern_mismatch" else e["msg"]
        parts.append(f"{loc}: {msg}" if loc else msg)
    more = exc.error_count() - limit
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


# ---------------------------------------------------------------- the files

def _open_regular(path: Path) -> int:
    """An fd on ``path`` that is a regular file and not a symlink (O_NOFOLLOW: no swap in between)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError("not a regular file")
    return fd


def _sha256(path: Path) -> tuple[str, int]:
    with os.fdopen(_open_regular(path), "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
        return digest, f.tell()


def bundle_files(root: Path) -> set[str]:
    """Every file under ``root`` as a manifest key (the manifest itself excluded); refuses
    symlinks and anything but folders and regular files."""
    found: set[str] = set()
    pending = [Path(root)]
    while pending:
        folder = pending.pop()
        with os.scandir(folder) as entries:
            for entry in entries:
                rel = Path(entry.path).relative_to(root).as_posix()
                if entry.is_symlink():
                    raise BundleError(f"bundle {root.name}: {rel[:80]} is a symbolic link")
                if entry.is_dir(follow_symlinks=False):
                    pending.append(Path(entry.path))
                elif entry.is_file(follow_symlinks=False):
                    found.add(rel)
                else:
                    raise BundleError(f"bundle {root.name}: {rel[:80]} is not a regular file")
    found.discard(MANIFEST)
    return found


def read_manifest(path: Path) -> dict:
    """The validated manifest of the bundle folder ``path`` (a plain dict, see ``BundleManifest``)."""
    path = Path(path)
    try:
        fd = _open_regular(path / MANIFEST)
    except FileNotFoundError:
        raise BundleError(f"bundle {path.name}: no {MANIFEST}") from None
    except OSError:
        raise BundleError(f"bundle {path.name}: {MANIFEST} is not a regular file") from None
    with os.fdopen(fd, "rb") as f:
        raw = f.read(BundleLayout.MAX_MANIFEST_BYTES + 1)
    if len(raw) > BundleLayout.MAX_MANIFEST_BYTES:
        raise BundleError(f"bundle {path.name}: {MANIFEST} is larger than {BundleLayout.MAX_MANIFEST_BYTES} bytes")
    try:
        manifest = BundleManifest.model_validate_json(raw)
    except ValidationError as exc:
        raise BundleError(f"bundle {path.name}: invalid {MANIFEST}: {describe_errors(exc)}") from None
    if manifest.bundle_id != path.name:
        raise BundleError(f"bundle {path.name}: {MANIFEST} names another bundle")
    return manifest.model_dump()


def verify_bundle(path: Path, scenarios: list[str] | None = None) -> dict:
    """Check the folder against its manifest: exactly the listed files, each a regular file with
    the listed size and SHA-256.  Returns the manifest."""
    path = Path(path)
    if path.is_symlink() or not path.is_dir():
        raise BundleError(f"bundle {path.name}: not a folder in the bundle dir")
    manifest = read_manifest(path)
    for scenario in scenarios or []:
        if scenario not in manifest["scenarios"]:
            raise BundleError(f"bundle {path.name} has no index for scenario {scenario!r}")
    on_disk, listed = bundle_files(path), set(manifest["files"])
    if on_disk - listed:
        raise BundleError(f"bundle {path.name}: files not in the manifest: {sorted(on_disk - listed)[:3]}")
    for rel in sorted(listed):
        meta = manifest["files"][rel]
        if rel not in on_disk:
            raise BundleError(f"bundle {path.name}: {rel} is missing")
        try:
            digest, size = _sha256(path / rel)
        except OSError:
            raise BundleError(f"bundle {path.name}: {rel} is not a readable regular file") from None
        if size != meta["bytes"] or digest != meta["sha256"]:
            raise BundleError(f"bundle {path.name}: checksum mismatch on {rel}")
    return manifest


# ---------------------------------------------------------------- the catalogs

def _read_catalog(path: Path, scenario: str, meta: dict, dim: int) -> ScenarioCatalog:
    sdir = BundleLayout(path).scenario_dir(scenario)
    try:
        index = read_index(sdir / BundleLayout.index_file(meta["index"]), meta["index"], dim)
        item_ids = np.load(sdir / BundleLayout.ITEM_IDS, allow_pickle=False)
        popular = np.load(sdir / BundleLayout.POPULAR, allow_pickle=False)
    except Exception as exc:  # FAISS raises RuntimeError, numpy ValueError on garbage
        raise BundleError(f"bundle {path.name}: cannot read {scenario}: {scrub(exc, path)}") from None
    if item_ids.dtype != np.int64 or popular.dtype != np.int64 or item_ids.ndim != 1 or popular.ndim != 1:
        raise BundleError(f"bundle {path.name}: {scenario} ids are not int64 vectors")
    return ScenarioCatalog(scenario, index, item_ids, popular, meta["index"])


def load_catalogs(path: Path, manifest: dict | None = None, scenarios: list[str] | None = None) -> dict[str, ScenarioCatalog]:
    """Read the per-scenario indexes and id maps, checking them against the manifest and each
    other, and every vector for NaN/inf."""
    path = Path(path)
    manifest = manifest or read_manifest(path)
    catalogs = {}
    for scenario in scenarios or list(manifest["scenarios"]):
        meta = manifest["scenarios"][scenario]
        catalog = _read_catalog(path, scenario, meta, manifest["dim"])
        if not (catalog.size == len(catalog.item_ids) == meta["count"]):
            raise BundleError(f"bundle {path.name}: {scenario} has {catalog.size} vectors, "
                              f"{len(catalog.item_ids)} ids, manifest says {meta['count']}")
        if catalog.index.d != manifest["dim"]:
            raise BundleError(f"bundle {path.name}: {scenario} index dim {catalog.index.d} != {manifest['dim']}")
        if len(catalog.popular) == 0 or not np.isin(catalog.popular, catalog.item_ids).all():
            raise BundleError(f"bundle {path.name}: {scenario} popular items are empty or not in the catalog")
        if not vectors_finite(catalog.index):
            raise BundleError(f"bundle {path.name}: {scenario} has non-finite item vectors")
        catalogs[scenario] = catalog
    return catalogs


# ---------------------------------------------------------------- the tower and the smoke query

@dataclass
class LoadedBundle:
    """Everything a request needs; immutable once built, swapped as one reference."""

    bundle_id: str
    path: Path
    manifest: dict
    catalogs: dict[str, ScenarioCatalog]
    tower: object
    rankers: object = None  # serving.ranking.BundleRankers, or None: the recall order is the answer

    @property
    def model_version(self):
        return self.manifest["model_version"]


def _load_tower(path: Path, manifest: dict, catalogs: dict[str, ScenarioCatalog]):
    from serving.towers import load_tower

    layout = BundleLayout(path)
    try:
        config = json.loads((layout.tower_dir / ModelArtifact.CONFIG).read_text())
        if not isinstance(config, dict) or config.get("kind") != manifest["kind"]:
            raise BundleError(f"bundle {path.name}: the tower's kind does not match the manifest's")
        tower = load_tower(layout.tower_dir, config, catalogs)
    except BundleError:
        raise
    except Exception as exc:  # includes training.export.ArtifactError and any torch error
        raise BundleError(f"bundle {path.name}: cannot load the user tower: {scrub(exc, path)}") from None
    bad = tower.nonfinite_weights()
    if bad:
        raise BundleError(f"bundle {path.name}: the user tower has non-finite weights in {bad[:3]}")
    return tower


def _load_rankers(path: Path, manifest: dict, settings: Settings):
    from serving.ranking import load_rankers, nonfinite_ranker_weights

    try:
        rankers = load_rankers(path, manifest, settings.ranking.coarse_keep, settings.scenarios)
    except Exception as exc:  # training.export.ArtifactError and any torch error
        raise BundleError(f"bundle {path.name}: cannot load the rankers: {scrub(exc, path)}") from None
    bad = nonfinite_ranker_weights(rankers) if rankers is not None else []
    if bad:
        raise BundleError(f"bundle {path.name}: the rankers have non-finite weights in {bad[:3]}")
    return rankers


def smoke_rows(tower, catalog: ScenarioCatalog, n: int = SMOKE_USERS) -> list[dict]:
    """Feature rows of real users: ids spread over the tower's user vocabulary (the unknown id 0
    for a tower without one), each with a click history of a few of the scenario's popular items."""
    from serving.feature_reader import empty_row

    vocab = getattr(getattr(tower, "users", None), "ids", None)
    users = vocab[np.linspace(0, len(vocab) - 1, n).astype(int)] if vocab is not None and len(vocab) else [0] * n
    rows = []
    for j, user in enumerate(users):
        row = empty_row(int(user))
        start = j % max(1, len(catalog.popular) - 4)
        row["recent_clicks"] = row["recent_clicks_all"] = catalog.popular[start:start + 5].tolist()
        rows.append(row)
    return rows


def smoke_test(bundle: LoadedBundle) -> None:
    """Refuse a bundle whose tower gives NaN/inf/zero vectors for real users, or whose index
    finds nothing for them."""
    dim = bundle.manifest["dim"]
    for scenario, catalog in bundle.catalogs.items():
        rows = smoke_rows(bundle.tower, catalog)
        try:
            vectors = np.asarray(bundle.tower.encode(rows, scenario), dtype=np.float32)
        except Exception as exc:
            raise BundleError(f"bundle {bundle.bundle_id}: user tower fails on {scenario}: "
                              f"{scrub(exc, bundle.path)}") from None
        if vectors.shape != (len(rows), dim) or not np.isfinite(vectors).all():
            raise BundleError(f"bundle {bundle.bundle_id}: user tower gave {vectors.shape} / non-finite "
                              f"vectors for {scenario}")
        if getattr(bundle.tower, "encodes", True) and not np.linalg.norm(vectors, axis=1).all():
            raise BundleError(f"bundle {bundle.bundle_id}: user tower gave zero vectors for known users in {scenario}")
        scores, ids = catalog.search(vectors, min(10, catalog.size))
        if not np.isfinite(scores).all() or not (ids >= 0).any(axis=1).all():
            raise BundleError(f"bundle {bundle.bundle_id}: smoke query on {scenario} found nothing")
        if bundle.rankers is not None:
            _smoke_rank(bundle, scenario, rows, ids)


def _smoke_rank(bundle: LoadedBundle, scenario: str, rows: list[dict], ids: np.ndarray) -> None:
    from serving.ranking import ItemFeatureCache, RankingStage, SimpleCandidates

    lists = [SimpleCandidates([int(i) for i in r if i >= 0], "sass") for r in ids]
    stage = RankingStage(ItemFeatureCache(None, 0.0), list(bundle.catalogs))
    try:
        ranked = stage.rank(bundle, bundle.rankers, scenario, rows, lists, [len(c.items) for c in lists])
    except Exception as exc:
        raise BundleError(f"bundle {bundle.bundle_id}: the rankers fail on {scenario}: {scrub(exc, bundle.path)}") from None
    if not all(np.isfinite(r.scores).all() and len(r.items) for r in ranked):
        raise BundleError(f"bundle {bundle.bundle_id}: the rankers gave non-finite scores on {scenario}")


def warm(bundle: LoadedBundle, queries: int) -> None:
    """Touch every index (page in lists/graph, size FAISS buffers) before real traffic."""
    rng = np.random.default_rng(0)
    for catalog in bundle.catalogs.values():
        for q in rng.standard_normal((queries, bundle.manifest["dim"])).astype(np.float32):
            catalog.search(q[None, :], min(100, catalog.size))


def load_bundle(path: Path, settings: Settings, warm_queries: int = 64) -> LoadedBundle:
    """Load, validate (see the module docstring) and warm a bundle.

    Raises ``BundleError`` for anything that should keep the old bundle serving."""
    path = Path(path)
    manifest = verify_bundle(path, settings.scenarios)
    catalogs = load_catalogs(path, manifest, settings.scenarios)
    bundle = LoadedBundle(path.name, path, manifest, catalogs, _load_tower(path, manifest, catalogs),
                          _load_rankers(path, manifest, settings))
    smoke_test(bundle)
    warm(bundle, warm_queries)
    return bundle
