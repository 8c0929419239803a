"""Model registry on SQLAlchemy 2 (SQLite by default, a Postgres URL in production).

A version records what it was trained on (data window, config, feature hash), how good it
is (metrics JSON), where its artifact lives (path + sha256) and its status:
candidate -> promoted | rejected; a promoted version becomes retired when another is promoted;
``rollback`` re-promotes the previous one.

Two gates: ``champion_challenger_gate`` (what the pipelines use) decides on scores measured now on
the same validation data (``training.gate``): the candidate must beat popularity and must not fall
below the re-scored promoted model by more than ``tolerance``; the first model must beat popularity
too. ``quality_gate`` compares recorded validation numbers only (kept for hand-registered models).

The registry owns its models' files: ``register`` copies the artifact into the model store
(``<store>/sha256-<digest>/``, content-addressed, read-only) and records that copy, so the folder a
training run wrote is scratch; ``artifact(version)`` hands out the stored copy after checking its
checksum.  Promotions are serialised by ``promotion_lock`` (``training.locks``): ``set_status``,
``rollback`` and ``holding_promotion`` (publishing the promoted model's bundle) take it, and a gate
holds it from reading the champion to promoting, so concurrent retrains see one promotion order.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import secrets
import shutil
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import JSON, BigInteger, Boolean, DateTime, Integer, String, Text, create_engine, select
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from training.export import ArtifactError  # the one error for a model's files (re-exported)

from training.locks import promotion_lock

STATUSES = ("candidate", "promoted", "rejected", "retired", "failed")
GATE_METRIC = "recall@50"


class Base(DeclarativeBase):
    pass


class ModelVersion(Base):
    __tablename__ = "model_versions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128), default="sass", index=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    status: Mapped[str] = mapped_column(String(16), default="candidate", index=True)
    status_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    metrics: Mapped[dict] = mapped_column(JSON, default=dict)
    data_start_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    data_end_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    config: Mapped[dict] = mapped_column(JSON, default=dict)
    feature_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    artifact_path: Mapped[str] = mapped_column(Text)
    artifact_sha256: Mapped[str] = mapped_column(String(64))
    bundle_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    published: Mapped[bool] = mapped_column(Boolean, default=False)

    def to_dict(self) -> dict:
        return {c.name: (getattr(self, c.name).isoformat() if isinstance(getattr(self, c.name), dt.datetime)
                         else getattr(self, c.name)) for c in self.__table__.columns}


def artifact_digest(path) -> str:
    """sha256 of an artifact: of the file, or of a folder's files (names + contents, sorted)."""
    p = Path(path)
    h = hashlib.sha256()
    files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file())
    if not files:
        raise FileNotFoundError(f"no artifact at {p}")
    for f in files:
        h.update(str(f.relative_to(p) if f != p else f.name).encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def feature_hash(spec: dict) -> str:
    """A stable hash of the feature definition a model was trained with."""
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


class Superseded(Exception):
    """The version is no longer the promoted one (another promotion happened since)."""


def store_artifact(store, src) -> tuple[Path, str]:
    """Copy the artifact at ``src`` into ``store/sha256-<digest>/`` (once: the same content lands in
    the same folder) and return (that folder, digest).  The copy is written to a hidden folder,
    checked against the source's digest and renamed into place, so the store never holds a partial
    or mislabelled model; its files are made read-only."""
    src = Path(src)
    digest = artifact_digest(src)
    dest = Path(store) / f"sha256-{digest}"
    if dest.is_dir() and artifact_digest(dest) == digest:
        return dest, digest
    tmp = Path(store) / f".incoming-{digest[:16]}-{secrets.token_hex(4)}"
    tmp.parent.mkdir(parents=True, exist_ok=True)
    try:
        if src.is_file():
            tmp.mkdir()
            shutil.copyfile(src, tmp / src.name)
        else:
            shutil.copytree(src, tmp)
        if artifact_digest(tmp) != digest:
            raise ArtifactError(f"{src} changed while it was copied into the model store")
        for f in tmp.rglob("*"):
            if f.is_file():
                f.chmod(0o444)
        if dest.exists():
            if artifact_digest(dest) == digest:  # another process stored it meanwhile
                return dest, digest
            shutil.rmtree(dest)  # a damaged earlier copy: replace it
        os.rename(tmp, dest)
    except OSError:
        if dest.is_dir() and artifact_digest(dest) == digest:  # another process stored it first
            return dest, digest
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest, digest


class ModelRegistry:
    def __init__(self, url: str, store=None, lock_timeout_s: float = 3600.0):
        """``store``: the model store folder that registered artifacts are copied into (required to
        register; reading needs none)."""
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self.engine = create_engine(url, future=True)
        self.store = Path(store) if store is not None else None
        self.lock_timeout_s = lock_timeout_s
        try:
            Base.metadata.create_all(self.engine)
        except (IntegrityError, OperationalError, ProgrammingError):
            # Another process created the tables at the same moment (PostgreSQL: duplicate type or table;
            # SQLite: "table already exists"): they exist now, and the second pass checks first.
            Base.metadata.create_all(self.engine)

    @classmethod
    def from_settings(cls, settings) -> "ModelRegistry":
        """The registry at ``settings.training.registry_url``, storing models in ``training.artifact_dir``."""
        t = settings.training
        return cls(t.registry_url.get_secret_value(), store=t.artifact_dir, lock_timeout_s=t.promotion_lock_timeout_s)

    def promotion_lock(self, name: str = "sass"):
        """Hold the promotion lock of ``name`` (reentrant in a thread; see ``training.locks``)."""
        return promotion_lock(self.engine, name, self.lock_timeout_s)

    @contextmanager
    def holding_promotion(self, version: int):
        """Run the body only while ``version`` is the promoted version of its name, holding the
        promotion lock (so no other promotion can slip in): raises ``Superseded`` otherwise."""
        v = self.get(version)
        with self.promotion_lock(v.name):
            current = self.promoted(v.name)
            if current is None or current.id != v.id:
                raise Superseded(f"version {v.id} is no longer promoted (promoted now: "
                                 f"{current.id if current else 'none'})")
            yield current

    def artifact(self, version: int) -> Path:
        """The stored artifact folder of ``version``, after checking it against its checksum."""
        v = self.get(version)
        if not self.verify_artifact(v.id):
            raise ArtifactError(f"version {v.id}: artifact at {v.artifact_path} is missing or does not "
                                f"match its sha256 {v.artifact_sha256[:12]}…")
        return Path(v.artifact_path)

    def _session(self) -> Session:
        return Session(self.engine, expire_on_commit=False)

    def register(self, artifact_path, *, name: str = "sass", metrics: dict | None = None,
                 data_start_ms: int | None = None, data_end_ms: int | None = None,
                 config: dict | None = None, feature_hash: str | None = None,
                 status: str = "candidate") -> ModelVersion:
        """A new version whose artifact is a copy of ``artifact_path`` in the model store."""
        if status not in STATUSES:
            raise ValueError(f"status {status!r} not in {STATUSES}")
        if self.store is None:
            raise ValueError("this registry has no model store to copy the artifact into "
                             "(ModelRegistry.from_settings, or store=...)")
        stored, digest = store_artifact(self.store, artifact_path)
        v = ModelVersion(name=name, created_at=dt.datetime.now(dt.timezone.utc), status=status,
                         metrics=metrics or {}, data_start_ms=data_start_ms, data_end_ms=data_end_ms,
                         config=config or {}, feature_hash=feature_hash,
                         artifact_path=str(stored.absolute()), artifact_sha256=digest)
        with self._session() as s, s.begin():
            s.add(v)
        return v

    @staticmethod
    def _get(s: Session, version: int) -> ModelVersion:
        v = s.get(ModelVersion, int(version))
        if v is None:
            raise KeyError(f"no model version {version}")
        return v

    def get(self, version: int) -> ModelVersion:
        with self._session() as s:
            return self._get(s, version)

    def list(self, name: str | None = None) -> list[ModelVersion]:
        q = select(ModelVersion).order_by(ModelVersion.id)
        if name:
            q = q.where(ModelVersion.name == name)
        with self._session() as s:
            return list(s.scalars(q))

    def latest(self, status: str | None = None, name: str | None = None) -> ModelVersion | None:
        q = select(ModelVersion).order_by(ModelVersion.id.desc()).limit(1)
        if status:
            q = q.where(ModelVersion.status == status)
        if name:
            q = q.where(ModelVersion.name == name)
        with self._session() as s:
            return s.scalars(q).first()

    def promoted(self, name: str = "sass") -> ModelVersion | None:
        """The promoted version of ``name`` (the recall model by default; the rankers are "ranker")."""
        return self.latest("promoted", name)

    def set_status(self, version: int, status: str, reason: str | None = None) -> ModelVersion:
        """Promoting retires the currently promoted version of the same name (one at a time).  Runs
        under the promotion lock, so it waits for a gate or publish in progress."""
        if status not in STATUSES:
            raise ValueError(f"status {status!r} not in {STATUSES}")
        with self.promotion_lock(self.get(version).name), self._session() as s, s.begin():
            v = self._get(s, version)
            if status == "promoted":
                for old in s.scalars(select(ModelVersion).where(ModelVersion.status == "promoted",
                                                                ModelVersion.name == v.name,
                                                                ModelVersion.id != v.id)):
                    old.status, old.status_reason = "retired", f"superseded by version {v.id}"
            v.status, v.status_reason = status, reason
        return v

    def mark_published(self, version: int, bundle_id: str) -> ModelVersion:
        with self._session() as s, s.begin():
            v = self._get(s, version)
            v.bundle_id, v.published = bundle_id, True
        return v

    def verify_artifact(self, version: int) -> bool:
        """True when the artifact on disk still has the registered sha256."""
        v = self.get(version)
        try:
            return artifact_digest(v.artifact_path) == v.artifact_sha256
        except OSError:
            return False

    def rollback(self, name: str = "sass", reason: str = "rollback") -> ModelVersion:
        """Retire the promoted version and re-promote the newest retired one before it."""
        with self.promotion_lock(name):
            cur = self.promoted(name)
            if cur is None:
                raise LookupError("nothing is promoted")
            prev = [v for v in self.list(name) if v.status == "retired" and v.id < cur.id]
            if not prev:
                raise LookupError(f"no earlier version of {name!r} to roll back to")
            self.set_status(cur.id, "retired", reason)
            return self.set_status(prev[-1].id, "promoted", f"{reason} from version {cur.id}")


def quality_gate(registry: ModelRegistry, candidate, tolerance: float,
                 metric: str = GATE_METRIC) -> tuple[bool, str]:
    """Promote ``candidate`` (version or id) if its artifact is intact and its validation
    ``metric`` (mean) is >= promoted - tolerance; otherwise mark it rejected."""
    cand = registry.get(candidate if isinstance(candidate, int) else candidate.id)
    if not registry.verify_artifact(cand.id):
        reason = f"artifact checksum mismatch at {cand.artifact_path}"
        registry.set_status(cand.id, "rejected", reason)
        return False, reason
    value = _val_metric(cand.metrics, metric)
    if value is None:
        reason = f"candidate has no validation {metric}"
        registry.set_status(cand.id, "rejected", reason)
        return False, reason
    cur = registry.promoted(cand.name)
    if cur is None or cur.id == cand.id:
        reason = f"first promoted model (val {metric} {value:.4f})"
    else:
        base = _val_metric(cur.metrics, metric) or 0.0
        if value < base - tolerance:
            reason = (f"val {metric} {value:.4f} < promoted v{cur.id} {base:.4f} - tolerance {tolerance}")
            registry.set_status(cand.id, "rejected", reason)
            return False, reason
        reason = f"val {metric} {value:.4f} >= promoted v{cur.id} {base:.4f} - tolerance {tolerance}"
    registry.set_status(cand.id, "promoted", reason)
    return True, reason


def _val_metric(metrics: dict, metric: str) -> float | None:
    try:
        return float(metrics["val"][metric]["mean"])
    except (KeyError, TypeError, ValueError):
        return None


def champion_challenger_gate(registry: ModelRegistry, candidate, scores, tolerance: float) -> tuple[bool, str]:
    """Promote ``candidate`` (version or id) on ``scores`` (``training.gate.GateScores``: candidate,
    re-scored champion, popularity on the same validation queries) or mark it rejected; the reason
    records all three numbers. A champion other than the one scored (promoted meanwhile) rejects:
    the evidence is about another model."""
    cand = registry.get(candidate if isinstance(candidate, int) else candidate.id)
    current = registry.promoted(cand.name)
    current_id = current.id if current is not None and current.id != cand.id else None
    ok, why = _gate_verdict(scores, tolerance, current_id)
    if ok and not registry.verify_artifact(cand.id):
        ok, why = False, f"artifact checksum mismatch at {cand.artifact_path}"
    reason = f"{_evidence(scores)}: {why}"
    registry.set_status(cand.id, "promoted" if ok else "rejected", reason)
    return ok, reason


def _gate_verdict(scores, tolerance: float, current_id: int | None) -> tuple[bool, str]:
    c, pop, champ = scores.candidate, scores.popularity, scores.champion
    if current_id != scores.champion_version:
        return False, (f"the promoted model is v{current_id}, the scores are against v{scores.champion_version}; "
                       f"score again")
    if not c > pop:  # NaN (no validation query) fails too
        return False, f"candidate {c:.4f} does not beat popularity {pop:.4f}"
    if current_id is None:
        return True, f"first promoted model: beats popularity {pop:.4f}"
    if champ is None:
        return True, f"beats popularity; the promoted v{current_id} could not be re-scored ({scores.champion_error})"
    if c < champ - tolerance:
        return False, f"candidate {c:.4f} < champion v{current_id} {champ:.4f} - tolerance {tolerance}"
    return True, f"beats popularity and {c:.4f} >= champion v{current_id} {champ:.4f} - tolerance {tolerance}"


def _evidence(scores) -> str:
    champ = "none" if scores.champion_version is None else (
        f"v{scores.champion_version} {scores.champion:.4f} (re-scored)" if scores.champion is not None
        else f"v{scores.champion_version} not re-scored")
    fresh = "" if scores.fresh_after_ms is None else f" after {scores.fresh_after_ms} ms"
    return (f"{scores.metric} on {scores.queries} queries{fresh}: candidate {scores.candidate:.4f}, "
            f"champion {champ}, popularity {scores.popularity:.4f}")
