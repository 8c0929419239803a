"""Serving bundles: building them, and the pointer files that say which one is served.

Layout: ``sassflow.contracts.artifacts.BundleLayout`` (files read-only once written).  A bundle is
built from a model artifact (``ModelArtifact``) or from a synthetic catalog, written to a hidden
temp folder, fsynced and renamed into place, so readers see all of it or nothing; an existing
bundle is never overwritten.  What makes a bundle servable is checked in ``serving.bundle_reader``.

The pointer files in the bundle dir, and the one meaning of each operation on them:

* ``CURRENT`` -- one line, the id of the bundle every service should serve (the services watch it);
* ``HISTORY`` -- the ids published so far, oldest first.  Only bundles that passed the same checks
  a service runs before serving (``validate_bundle``) are ever written to either file;
* publish -- validate the bundle, append it to ``HISTORY``, point ``CURRENT`` at it;
* rollback -- move ``CURRENT`` back to the newest bundle published before the current one that
  still validates; the current bundle and any that fail are dropped from ``HISTORY``.  The CLI
  (``sassflow bundle rollback``) and ``POST /admin/rollback`` do exactly this (the service that
  received the call swaps at once, the others when their watcher sees the pointer move).
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
from typing import Callable

import numpy as np
from pydantic import ValidationError

from sassflow.contracts.artifacts import BundleLayout, BundleManifest, ModelArtifact, RankerArtifact, ScenarioItems
from sassflow.files import fsync_dir, sha256_file, write_text_atomic
from sassflow.settings import Settings
from serving.bundle_reader import (  # noqa: F401  (re-exported: the bundle API is this module)
    BundleError, LoadedBundle, describe_errors, load_bundle, load_catalogs, read_manifest, verify_bundle,
)
from serving.index import build_index, index_spec, write_index

MANIFEST = BundleLayout.MANIFEST
CURRENT = BundleLayout.CURRENT
HISTORY = BundleLayout.HISTORY
FORMAT_VERSION = 1


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
    """Sortable by creation time, unique, safe as a folder name (``BundleLayout.ID_PATTERN``)."""
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
    ranking: dict | None = None,
    ranker_files: dict[str, Path] | None = None,
) -> Path:
    """Write a new bundle and return its path.

    ``tower_files``: file name -> source path, copied into the tower folder next to its config.
    ``ranking``: the manifest's ranking section (``RankingEntry``); ``ranker_files`` (file name -> source
    path) are copied into ``ranking/`` when it says the rankers are included.
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
        manifest = {"format": FORMAT_VERSION, "bundle_id": bundle_id,
                    "model_version": model_version if isinstance(model_version, (int, str)) else str(model_version),
                    "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "kind": tower_config["kind"], "dim": int(dims.pop()), "scenarios": {}, "files": {}}
        tmp.tower_dir.mkdir()
        for name, src in tower_files.items():
            shutil.copyfile(src, tmp.tower_dir / name)
        (tmp.tower_dir / ModelArtifact.CONFIG).write_text(json.dumps(tower_config, indent=1))
        for scenario, items in scenarios.items():
            manifest["scenarios"][scenario] = _write_scenario(settings, tmp, scenario, items, progress)
        if ranking is not None:
            manifest["ranking"] = ranking
            if ranking.get("included"):
                tmp.ranking_dir.mkdir()
                for name, src in (ranker_files or {}).items():
                    shutil.copyfile(src, tmp.ranking_dir / name)
        for path in sorted(p for p in tmp.root.rglob("*") if p.is_file()):
            rel = path.relative_to(tmp.root).as_posix()
            manifest["files"][rel] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
        tmp.manifest_path.write_text(_checked_manifest(manifest).model_dump_json(indent=1))
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


def _checked_manifest(manifest: dict) -> BundleManifest:
    """Through the schema the readers validate against: a bundle is built valid or not at all."""
    try:
        return BundleManifest.model_validate(manifest)
    except ValidationError as exc:
        raise BundleError(f"cannot build a valid manifest: {describe_errors(exc)}") from None


def _write_scenario(settings: Settings, layout: BundleLayout, scenario: str, items: ScenarioItems,
                    progress) -> dict:
    """One scenario's index, ids and popularity; returns its manifest entry."""
    item_ids = np.asarray(items.item_ids, dtype=np.int64)
    vectors = np.asarray(items.vectors, dtype=np.float32)
    if len(item_ids) != len(vectors) or len(item_ids) == 0:
        raise BundleError(f"{scenario}: {len(item_ids)} item ids for {len(vectors)} vectors")
    if not np.isfinite(vectors).all():
        raise BundleError(f"{scenario}: the item vectors hold NaN or inf")
    spec = index_spec(len(item_ids), settings.serving)
    if progress:
        progress(f"{scenario}: {spec['type']} index over {len(item_ids)} items")
    sdir = layout.scenario_dir(scenario)
    sdir.mkdir()
    write_index(build_index(vectors, spec, seed=settings.training.seed), sdir / BundleLayout.index_file(spec))
    np.save(sdir / BundleLayout.ITEM_IDS, item_ids)
    popular = np.asarray(items.popular, dtype=np.int64)
    if len(popular) == 0:  # no clicks in training: cold start still needs an answer
        popular = item_ids[:1000]
    np.save(sdir / BundleLayout.POPULAR, popular)
    return {"count": int(len(item_ids)), "index": spec, "popular": int(len(popular))}


def ranking_entry(ranker_dir) -> tuple[dict, dict[str, Path]]:
    """The manifest's ranking section and the files to ship, from a ranker artifact folder (its
    ``config.json`` records the gate's decision: ``included``, ``reason``, validation ``metrics``)."""
    art = RankerArtifact(ranker_dir)
    try:
        meta = json.loads((art.root / RankerArtifact.CONFIG).read_text())
    except (OSError, ValueError) as exc:
        raise BundleError(f"ranker {art.root.name}: unreadable {RankerArtifact.CONFIG}: {exc}") from None
    included = bool(meta.get("included"))
    entry = {"included": included, "reason": str(meta.get("reason", ""))[:500],
             "fine": included and bool(meta.get("fine")),
             "metrics": {k: float(v) for k, v in (meta.get("gate_metrics") or {}).items()}}
    return entry, (art.files() if included else {})


def build_bundle(settings: Settings, artifact_dir, model_version, publish: bool = True, progress=None,
                 ranker_dir=None, ranking: dict | None = None) -> Path:
    """A bundle from a model artifact folder; published (``publish_bundle``) unless ``publish`` is False.

    ``ranker_dir``: a ranker artifact to ship beside the model (it goes in only if its gate kept it;
    the manifest says which, and why).  ``ranking``: a ranking section to record instead, when no ranker
    folder exists (e.g. ``{"included": False, "reason": "rankers are disabled"}``)."""
    artifact = ModelArtifact(artifact_dir)
    try:
        config = artifact.read_config()
    except (OSError, ValueError) as exc:
        raise BundleError(f"{artifact.root / ModelArtifact.CONFIG} is unreadable: {exc}") from None
    if not isinstance(config, dict) or "kind" not in config:
        raise BundleError(f"{artifact.root / ModelArtifact.CONFIG} has no 'kind'")
    try:
        scenarios = {s: artifact.read_scenario(s) for s in settings.scenarios}
    except FileNotFoundError as exc:
        raise BundleError(str(exc)) from None
    tower_files = {n: p for n, p in artifact.tower_files().items() if n != ModelArtifact.CONFIG}
    ranker_files = None
    if ranker_dir is not None:
        ranking, ranker_files = ranking_entry(ranker_dir)
    path = write_bundle(settings, model_version, config, tower_files, scenarios, progress=progress,
                        ranking=ranking, ranker_files=ranker_files)
    if publish:
        publish_bundle(settings, path.name)
    return path


def build_synthetic_bundle(
    settings: Settings, n_items: int, dim: int, scenarios: list[str] | None = None, seed: int = 0,
    model_version=None, publish: bool = False, progress=None, catalog=None, ranker_dir=None,
) -> Path:
    """A bundle over a synthetic catalog with the mean-history tower (tests, benchmarks).

    ``catalog``: ``synthetic_catalog`` of these same arguments, when the caller already made it;
    ``ranker_dir``: a ranker artifact to ship (e.g. ``serving.synthetic.synthetic_rankers``)."""
    from serving.synthetic import synthetic_catalog

    scenarios = scenarios or settings.scenarios
    if catalog is None:
        catalog = synthetic_catalog(n_items, dim, scenarios, seed)
    data = {s: ScenarioItems(c.item_ids, c.vectors, c.popular) for s, c in catalog.items()}
    ranking, ranker_files = ranking_entry(ranker_dir) if ranker_dir is not None else (None, None)
    path = write_bundle(
        settings, model_version if model_version is not None else f"synthetic-{seed}",
        {"kind": "mean_history", "dim": dim, "seed": seed}, {}, data, progress=progress,
        ranking=ranking, ranker_files=ranker_files,
    )
    if publish:
        publish_bundle(settings, path.name)
    return path


# ---------------------------------------------------------------- publishing

def bundle_path(settings: Settings, bundle_id: str) -> Path:
    """The folder of ``bundle_id``: refused unless the id is a plain bundle id (no path) naming a
    real folder (not a symlink) directly inside the bundle dir."""
    if not BundleLayout.is_bundle_id(bundle_id):
        raise BundleError("not a bundle id: a bundle id is a plain folder name "
                          f"({BundleLayout.ID_PATTERN}), never a path")
    path = Path(settings.serving.bundle_dir) / bundle_id
    if path.is_symlink() or not path.is_dir():
        raise BundleError(f"bundle {bundle_id} is not a folder in the bundle dir")
    return path


def validate_bundle(settings: Settings, bundle_id: str) -> LoadedBundle:
    """Every check a service runs before serving ``bundle_id`` (``load_bundle`` without warming)."""
    return load_bundle(bundle_path(settings, bundle_id), settings, warm_queries=0)


@dataclass(frozen=True)
class Pointer:
    """What ``CURRENT`` says: a bundle id, nothing (never published), or a problem."""

    bundle_id: str | None
    problem: str | None = None


def read_pointer(settings: Settings) -> Pointer:
    try:
        with open(Path(settings.serving.bundle_dir) / CURRENT, "rb") as f:
            raw = f.read(BundleLayout.MAX_POINTER_BYTES + 1)
    except FileNotFoundError:
        return Pointer(None)
    except OSError as exc:
        return Pointer(None, f"{CURRENT} is unreadable ({type(exc).__name__})")
    try:
        text = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        text = None
    if not text:
        return Pointer(None, None if raw.strip() == b"" else f"{CURRENT} does not hold a bundle id")
    if not BundleLayout.is_bundle_id(text):
        return Pointer(None, f"{CURRENT} does not hold a bundle id (a plain folder name, never a path)")
    return Pointer(text)


def current_bundle_id(settings: Settings) -> str | None:
    """The id ``CURRENT`` points at; None when nothing valid was published."""
    return read_pointer(settings).bundle_id


def read_history(settings: Settings) -> list[str]:
    """The published ids, oldest first (lines that are not bundle ids are ignored)."""
    p = Path(settings.serving.bundle_dir) / HISTORY
    try:
        lines = p.read_bytes().decode("ascii", errors="replace").splitlines()
    except FileNotFoundError:
        return []
    return [line.strip() for line in lines if BundleLayout.is_bundle_id(line.strip())]


def _write_pointers(bundle_dir: Path, history: list[str], current: str) -> None:
    write_text_atomic(bundle_dir / HISTORY, "\n".join(history) + "\n")
    write_text_atomic(bundle_dir / CURRENT, current + "\n")


def publish_bundle(settings: Settings, bundle_id: str) -> dict:
    """Validate ``bundle_id`` exactly as a service would, then make it the one to serve; returns
    its manifest.  A bundle that fails raises ``BundleError`` and the pointer files stay as they were."""
    manifest = validate_bundle(settings, bundle_id).manifest
    bundle_dir = Path(settings.serving.bundle_dir)
    with _pointer_lock(bundle_dir):
        history = read_history(settings)
        if not history or history[-1] != bundle_id:
            history.append(bundle_id)
        _write_pointers(bundle_dir, history, bundle_id)
    return manifest


def rollback_bundle(settings: Settings, load: Callable[[str], LoadedBundle] | None = None) -> LoadedBundle:
    """Point ``CURRENT`` at the newest bundle published before the current one that validates
    (``load``: how to validate; default ``validate_bundle``); returns it, loaded.  The current
    bundle and those that fail are dropped from ``HISTORY``."""
    load = load or (lambda bundle_id: validate_bundle(settings, bundle_id))
    bundle_dir = Path(settings.serving.bundle_dir)
    with _pointer_lock(bundle_dir):
        history, current = read_history(settings), current_bundle_id(settings)
        if current in history:
            history = history[: len(history) - history[::-1].index(current) - 1]
        while history:
            candidate = history.pop()
            if candidate == current:
                continue
            try:
                loaded = load(candidate)
            except BundleError:
                continue  # a corrupt, deleted or refused bundle is no rollback target
            _write_pointers(bundle_dir, history + [candidate], candidate)
            return loaded
    raise BundleError(f"no earlier published bundle validates (current: {current})")


def list_bundles(settings: Settings) -> list[dict]:
    bundle_dir = Path(settings.serving.bundle_dir)
    current = current_bundle_id(settings)
    out = []
    for path in sorted(bundle_dir.iterdir()) if bundle_dir.exists() else []:
        if path.is_dir() and not path.is_symlink() and BundleLayout.is_bundle_id(path.name):
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
