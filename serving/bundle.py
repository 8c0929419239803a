"""Serving bundles: immutable, versioned, checksummed snapshots of a model for retrieval.

Layout: ``sassflow.contracts.artifacts.BundleLayout`` (files read-only once written).  A bundle is
built from a model artifact (``ModelArtifact``) or from a synthetic catalog.  A bundle is written to a hidden temp folder, fsynced and renamed into place, so
readers see all of it or nothing; an existing bundle is never overwritten.
Publishing writes ``<bundle_dir>/CURRENT`` (one line: the bundle id) atomically
and pushes the id on ``<bundle_dir>/HISTORY``; rollback pops it.  The service
watches ``CURRENT``.
"""
from __future__ import annotations

import fcntl
import json
import os
import re
import secrets
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sassflow.contracts.artifacts import BundleLayout, ModelArtifact, ScenarioItems
from sassflow.files import fsync_dir, sha256_file, write_text_atomic
from sassflow.settings import Settings
from serving.index import ScenarioCatalog, build_index, index_file, index_spec, read_index, write_index

MANIFEST = BundleLayout.MANIFEST
CURRENT = BundleLayout.CURRENT
HISTORY = BundleLayout.HISTORY
FORMAT_VERSION = 1
SCENARIO_FILES = BundleLayout.SCENARIO_FILES


class BundleError(Exception):
    """A bundle that is missing, corrupt or does not match this service."""


# ---------------------------------------------------------------- small file helpers

def _fsync_tree(root: Path) -> None:
    for path in sorted(root.rglob("*"), reverse=True):
        fsync_dir(path)  # an O_RDONLY fd + fsync: files as well as folders
    fsync_dir(root)


@contextmanager
def _pointer_lock(bundle_dir: Path):
    """Serialise publish/rollback between processes (CLI, admin endpoint, pipelines)."""
    bundle_dir.mkdir(parents=True, exist_ok=True)
    with open(bundle_dir / ".lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def new_bundle_id(model_version) -> str:
    """Sortable by creation time, unique, safe as a folder name."""
    now = time.time()
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f"{int(now * 1000) % 1000:03d}"
    version = re.sub(r"[^A-Za-z0-9_.-]", "_", str(model_version))[:40]
    return f"{stamp}-mv{version}-{secrets.token_hex(3)}"


# ---------------------------------------------------------------- building

def write_bundle(
    settings: Settings,
    model_version,
    tower_config: dict,
    tower_files: dict[str, Path],
    scenarios: dict[str, ScenarioItems],
    progress=None,
) -> Path:
    """Write a new bundle and return its path.

    ``tower_files``: file name -> source path, copied into the tower folder next to its config.
    """
    bundle_dir = Path(settings.serving.bundle_dir)
    bundle_dir.mkdir(parents=True, exist_ok=True)
    bundle_id = new_bundle_id(model_version)
    final = bundle_dir / bundle_id
    tmp = BundleLayout(bundle_dir / f".building-{bundle_id}")
    tmp.root.mkdir()
    try:
        dims = {items.vectors.shape[1] for items in scenarios.values()}
        if len(dims) != 1:
            raise BundleError(f"scenarios disagree on the vector dimension: {sorted(dims)}")
        manifest = {"format": FORMAT_VERSION, "bundle_id": bundle_id, "model_version": model_version,
                    "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "kind": tower_config["kind"], "dim": dims.pop(), "scenarios": {}, "files": {}}
        tmp.tower_dir.mkdir()
        for name, src in tower_files.items():
            shutil.copyfile(src, tmp.tower_dir / name)
        (tmp.tower_dir / ModelArtifact.CONFIG).write_text(json.dumps(tower_config, indent=1))
        for scenario, items in scenarios.items():
            manifest["scenarios"][scenario] = _write_scenario(settings, tmp, scenario, items, progress)
        for path in sorted(p for p in tmp.root.rglob("*") if p.is_file()):
            rel = path.relative_to(tmp.root).as_posix()
            manifest["files"][rel] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
        tmp.manifest_path.write_text(json.dumps(manifest, indent=1))
        for path in tmp.root.rglob("*"):
            if path.is_file():
                path.chmod(0o444)
        _fsync_tree(tmp.root)
        if final.exists():  # ids are unique; this only guards the "never overwrite" promise
            raise BundleError(f"bundle {bundle_id} already exists")
        os.rename(tmp.root, final)
    except BaseException:
        shutil.rmtree(tmp.root, ignore_errors=True)
        raise
    return final


def _write_scenario(settings: Settings, layout: BundleLayout, scenario: str, items: ScenarioItems,
                    progress) -> dict:
    """One scenario's index, ids and popularity; returns its manifest entry."""
    item_ids = np.asarray(items.item_ids, dtype=np.int64)
    vectors = np.asarray(items.vectors, dtype=np.float32)
    if len(item_ids) != len(vectors) or len(item_ids) == 0:
        raise BundleError(f"{scenario}: {len(item_ids)} item ids for {len(vectors)} vectors")
    spec = index_spec(len(item_ids), settings.serving)
    if progress:
        progress(f"{scenario}: {spec['type']} index over {len(item_ids)} items")
    sdir = layout.scenario_dir(scenario)
    sdir.mkdir()
    write_index(build_index(vectors, spec, seed=settings.training.seed), sdir / index_file(spec))
    np.save(sdir / BundleLayout.ITEM_IDS, item_ids)
    popular = np.asarray(items.popular, dtype=np.int64)
    if len(popular) == 0:  # no clicks in training: cold start still needs an answer
        popular = item_ids[:1000]
    np.save(sdir / BundleLayout.POPULAR, popular)
    return {"count": int(len(item_ids)), "index": spec, "popular": int(len(popular))}


def build_bundle(settings: Settings, artifact_dir, model_version, publish: bool = True, progress=None) -> Path:
    """A bundle from a model artifact folder; published (``publish_bundle``) unless ``publish`` is False."""
    artifact = ModelArtifact(artifact_dir)
    config = artifact.read_config()
    if "kind" not in config:
        raise BundleError(f"{artifact.root / ModelArtifact.CONFIG} has no 'kind'")
    try:
        scenarios = {s: artifact.read_scenario(s) for s in settings.scenarios}
    except FileNotFoundError as exc:
        raise BundleError(str(exc)) from None
    tower_files = {n: p for n, p in artifact.tower_files().items() if n != ModelArtifact.CONFIG}
    path = write_bundle(settings, model_version, config, tower_files, scenarios, progress=progress)
    if publish:
        publish_bundle(settings, path.name)
    return path


def build_synthetic_bundle(
    settings: Settings, n_items: int, dim: int, scenarios: list[str] | None = None, seed: int = 0,
    model_version=None, publish: bool = False, progress=None, catalog=None,
) -> Path:
    """A bundle over a synthetic catalog with the mean-history tower (tests, benchmarks).

    ``catalog``: ``synthetic_catalog`` of these same arguments, when the caller already made it."""
    from serving.synthetic import synthetic_catalog

    scenarios = scenarios or settings.scenarios
    if catalog is None:
        catalog = synthetic_catalog(n_items, dim, scenarios, seed)
    data = {s: ScenarioItems(c.item_ids, c.vectors, c.popular) for s, c in catalog.items()}
    path = write_bundle(
        settings, model_version if model_version is not None else f"synthetic-{seed}",
        {"kind": "mean_history", "dim": dim, "seed": seed}, {}, data, progress=progress,
    )
    if publish:
        publish_bundle(settings, path.name)
    return path


# ---------------------------------------------------------------- publishing

def _read_history(bundle_dir: Path) -> list[str]:
    p = bundle_dir / HISTORY
    return [line.strip() for line in p.read_text().splitlines() if line.strip()] if p.exists() else []


def current_bundle_id(settings: Settings) -> str | None:
    p = Path(settings.serving.bundle_dir) / CURRENT
    try:
        return p.read_text().strip() or None
    except FileNotFoundError:
        return None


def publish_bundle(settings: Settings, bundle_id: str) -> dict:
    """Make ``bundle_id`` the one the service should serve; returns its manifest."""
    bundle_dir = Path(settings.serving.bundle_dir)
    manifest = read_manifest(bundle_dir / bundle_id)
    with _pointer_lock(bundle_dir):
        history = _read_history(bundle_dir)
        if not history or history[-1] != bundle_id:
            history.append(bundle_id)
        write_text_atomic(bundle_dir / HISTORY, "\n".join(history) + "\n")
        write_text_atomic(bundle_dir / CURRENT, bundle_id + "\n")
    return manifest


def rollback_bundle(settings: Settings) -> str:
    """Re-publish the previous good bundle (the one published before the current one
    whose files still verify); returns its id."""
    bundle_dir = Path(settings.serving.bundle_dir)
    with _pointer_lock(bundle_dir):
        history = _read_history(bundle_dir)
        current = current_bundle_id(settings)
        if current in history:
            history = history[: len(history) - history[::-1].index(current) - 1]
        while history:
            candidate = history[-1]
            try:
                verify_bundle(bundle_dir / candidate)
            except BundleError:
                history.pop()  # a corrupt or deleted bundle is no rollback target
                continue
            write_text_atomic(bundle_dir / HISTORY, "\n".join(history) + "\n")
            write_text_atomic(bundle_dir / CURRENT, candidate + "\n")
            return candidate
    raise BundleError(f"no previous good bundle to roll back to (current: {current})")


def list_bundles(settings: Settings) -> list[dict]:
    bundle_dir = Path(settings.serving.bundle_dir)
    current = current_bundle_id(settings)
    out = []
    for path in sorted(bundle_dir.iterdir()) if bundle_dir.exists() else []:
        if path.is_dir() and not path.name.startswith("."):
            try:
                m = read_manifest(path)
            except BundleError as exc:
                out.append({"bundle_id": path.name, "error": str(exc), "current": path.name == current})
                continue
            out.append({
                "bundle_id": path.name, "model_version": m["model_version"], "created_at": m["created_at"],
                "kind": m["kind"], "items": sum(s["count"] for s in m["scenarios"].values()),
                "current": path.name == current,
            })
    return out


# ---------------------------------------------------------------- validation and loading

def read_manifest(path: Path) -> dict:
    try:
        manifest = json.loads((Path(path) / MANIFEST).read_text())
    except FileNotFoundError:
        raise BundleError(f"{path} has no {MANIFEST}") from None
    except (OSError, ValueError) as exc:
        raise BundleError(f"{path}/{MANIFEST} is unreadable: {exc}") from None
    if manifest.get("format") != FORMAT_VERSION or manifest.get("bundle_id") != Path(path).name:
        raise BundleError(f"{path}/{MANIFEST}: wrong format or bundle id")
    return manifest


def verify_bundle(path: Path, scenarios: list[str] | None = None) -> dict:
    """Check every file against the manifest's sha256; return the manifest."""
    path = Path(path)
    manifest = read_manifest(path)
    for scenario in scenarios or []:
        if scenario not in manifest["scenarios"]:
            raise BundleError(f"bundle {path.name} has no index for scenario {scenario!r}")
    for scenario, meta in manifest["scenarios"].items():
        for name in (index_file(meta["index"]), BundleLayout.ITEM_IDS, BundleLayout.POPULAR):
            if BundleLayout(path).scenario_file(scenario, name) not in manifest["files"]:
                raise BundleError(f"bundle {path.name}: manifest lists no {scenario}/{name}")
    for rel, meta in manifest["files"].items():
        f = path / rel
        if not f.is_file():
            raise BundleError(f"bundle {path.name}: {rel} is missing")
        if f.stat().st_size != meta["bytes"] or sha256_file(f) != meta["sha256"]:
            raise BundleError(f"bundle {path.name}: checksum mismatch on {rel}")
    return manifest


def load_catalogs(path: Path, manifest: dict | None = None, scenarios: list[str] | None = None) -> dict[str, ScenarioCatalog]:
    """Read the per-scenario indexes and id maps, checking counts and dims against the manifest."""
    path = Path(path)
    manifest = manifest or read_manifest(path)
    catalogs = {}
    for scenario in scenarios or list(manifest["scenarios"]):
        meta = manifest["scenarios"][scenario]
        sdir = BundleLayout(path).scenario_dir(scenario)
        try:
            index = read_index(sdir / index_file(meta["index"]), meta["index"], manifest["dim"])
            item_ids = np.load(sdir / BundleLayout.ITEM_IDS, allow_pickle=False)
            popular = np.load(sdir / BundleLayout.POPULAR, allow_pickle=False)
        except Exception as exc:  # FAISS raises RuntimeError, numpy ValueError on garbage
            raise BundleError(f"bundle {path.name}: cannot read {scenario}: {exc}") from None
        if not (index.ntotal == len(item_ids) == meta["count"]):
            raise BundleError(
                f"bundle {path.name}: {scenario} has {index.ntotal} vectors, {len(item_ids)} ids, "
                f"manifest says {meta['count']}"
            )
        if index.d != manifest["dim"]:
            raise BundleError(f"bundle {path.name}: {scenario} index dim {index.d} != {manifest['dim']}")
        if len(popular) == 0:
            raise BundleError(f"bundle {path.name}: {scenario} has no popular items for cold start")
        catalogs[scenario] = ScenarioCatalog(scenario, index, item_ids, popular, meta["index"])
    return catalogs


@dataclass
class LoadedBundle:
    """Everything a request needs; immutable once built, swapped as one reference."""

    bundle_id: str
    path: Path
    manifest: dict
    catalogs: dict[str, ScenarioCatalog]
    tower: object

    @property
    def model_version(self):
        return self.manifest["model_version"]


def smoke_row(catalog: ScenarioCatalog) -> dict:
    """A plausible feature row: a user who clicked the scenario's five most popular items."""
    from serving.feature_reader import empty_row

    row = empty_row(0)
    row["recent_clicks"] = catalog.popular[:5].tolist()
    row["recent_clicks_all"] = row["recent_clicks"]
    return row


def load_bundle(path: Path, settings: Settings, warm_queries: int = 64) -> LoadedBundle:
    """Load, validate (checksums, counts, a smoke query per scenario) and warm a bundle.

    Raises ``BundleError`` for anything that should keep the old bundle serving."""
    from serving.towers import load_tower

    path = Path(path)
    manifest = verify_bundle(path, settings.scenarios)
    catalogs = load_catalogs(path, manifest, settings.scenarios)
    try:
        layout = BundleLayout(path)
        config = json.loads((layout.tower_dir / ModelArtifact.CONFIG).read_text())
        tower = load_tower(layout.tower_dir, config, catalogs)
    except BundleError:
        raise
    except Exception as exc:  # includes training.export.ArtifactError
        raise BundleError(f"bundle {path.name}: cannot load the user tower: {exc}") from None
    rng = np.random.default_rng(0)
    for scenario, catalog in catalogs.items():
        try:
            vec = np.asarray(tower.encode([smoke_row(catalog)], scenario), dtype=np.float32)
        except Exception as exc:
            raise BundleError(f"bundle {path.name}: user tower fails on {scenario}: {exc}") from None
        if vec.shape != (1, manifest["dim"]) or not np.isfinite(vec).all():
            raise BundleError(f"bundle {path.name}: user tower gave {vec.shape} / non-finite for {scenario}")
        k = min(10, catalog.size)
        scores, ids = catalog.search(vec if np.any(vec) else rng.standard_normal((1, manifest["dim"])), k)
        if not np.isfinite(scores).all() or (ids < 0).all():
            raise BundleError(f"bundle {path.name}: smoke query on {scenario} found nothing")
        # Warm: touch the index (page in lists/graph, size FAISS buffers) before real traffic.
        queries = rng.standard_normal((warm_queries, manifest["dim"])).astype(np.float32)
        for q in queries:
            catalog.search(q[None, :], min(100, catalog.size))
    return LoadedBundle(path.name, path, manifest, catalogs, tower)
