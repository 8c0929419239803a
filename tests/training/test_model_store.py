"""The registry owns its models' files (content-addressed copies in the model store), and promotions
are serialised by the promotion lock, on the default SQLite registry and on a real PostgreSQL."""
from __future__ import annotations

import multiprocessing as mp
import shutil
import tempfile
import time
from pathlib import Path

import pytest
import torch

from training.baselines import model_config
from training.export import export_artifacts
from training.locks import LockTimeout
from training.model import SASS
from training.registry import ArtifactError, ModelRegistry, Superseded, artifact_digest


def _metrics(recall):
    return {"val": {"recall@50": {"mean": recall}}, "test": {"recall@50": {"mean": recall}}}


@pytest.fixture
def run_folder(syn_data, settings, tmp_path):
    """A model exported into a training run's scratch folder."""
    torch.manual_seed(0)
    out = tmp_path / "runs" / "sass_retrain" / "2024-01-01T000000" / "retrain.finetune"
    export_artifacts(SASS(model_config(syn_data, settings.training)).eval(), out, syn_data)
    return out


@pytest.fixture(scope="module")
def postgres_url():
    """A throwaway PostgreSQL on loopback (under /tmp: when tests run as root, the server runs as the
    ``postgres`` user and must reach its data directory)."""
    from cli.local.postgres import LocalPostgres
    from sassflow.processes import free_port

    root = Path(tempfile.mkdtemp(prefix="sassflow-registry-pg-"))
    root.chmod(0o755)
    pg = LocalPostgres(root / "pg", port=free_port(), database="registry")
    pg.start()
    try:
        yield pg.url()
    finally:
        pg.stop()
        shutil.rmtree(root, ignore_errors=True)


def test_registered_model_lives_in_the_store_and_survives_its_run_folder(run_folder, settings):
    from serving.bundle import build_bundle

    reg = ModelRegistry.from_settings(settings)
    digest = artifact_digest(run_folder)
    v = reg.register(run_folder, metrics=_metrics(0.4))
    stored = Path(v.artifact_path)
    assert stored == Path(settings.training.artifact_dir) / f"sha256-{digest}" and v.artifact_sha256 == digest
    assert all(not (f.stat().st_mode & 0o222) for f in stored.rglob("*") if f.is_file())  # read-only
    again = reg.register(run_folder, metrics=_metrics(0.4))  # same content: same folder, no second copy
    assert again.artifact_path == v.artifact_path

    shutil.rmtree(run_folder.parents[1])  # cleaning old run folders deletes nothing the registry needs
    assert reg.artifact(v.id) == stored and reg.verify_artifact(v.id)
    bundle = build_bundle(settings, reg.artifact(v.id), v.id, publish=False)
    assert (bundle / "manifest.json").exists()

    (stored / "model.pt").chmod(0o644)
    (stored / "model.pt").write_bytes(b"tampered")
    with pytest.raises(ArtifactError, match="sha256"):
        reg.artifact(v.id)


def test_a_registry_without_a_store_refuses_to_register(run_folder, settings):
    reg = ModelRegistry(settings.training.registry_url.get_secret_value())
    with pytest.raises(ValueError, match="model store"):
        reg.register(run_folder)


def _hold_and_promote(url, store, log, index, hold_s, barrier):
    """One contender: takes the promotion lock, reads the champion, waits (a gate re-scoring it),
    then promotes its own candidate over it; logs when it held the lock and what it compared with."""
    reg = ModelRegistry(url, store=store, lock_timeout_s=60)
    barrier.wait(60)  # all contenders ask for the lock at the same moment
    asked = time.time()
    with reg.promotion_lock():
        t0 = time.time()
        champion = reg.promoted()
        time.sleep(hold_s)
        mine = reg.register(Path(store).parent / "model", metrics=_metrics(0.4))
        reg.set_status(mine.id, "promoted", f"over {champion.id if champion else None}")  # reentrant
        with open(log, "a") as f:
            f.write(f"{index} {t0} {time.time()} {mine.id} {champion.id if champion else None} {asked}\n")


def _contend(url, tmp_path, run_folder, n=3, hold_s=0.5):
    store = tmp_path / "store" / "models"
    shutil.copytree(run_folder, store.parent / "model")
    log = tmp_path / "lock.log"
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(n)
    procs = [ctx.Process(target=_hold_and_promote, args=(url, str(store), str(log), i, hold_s, barrier))
             for i in range(n)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0] * n
    rows = sorted(tuple(float(x) if "." in x else (None if x == "None" else int(x)) for x in line.split())
                  for line in log.read_text().splitlines())
    return sorted(rows, key=lambda r: r[1]), ModelRegistry(url)


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_concurrent_promotions_take_turns_and_leave_one_promoted(backend, run_folder, tmp_path, request):
    url = f"sqlite:///{tmp_path / 'registry.db'}" if backend == "sqlite" else request.getfixturevalue("postgres_url")
    rows, reg = _contend(url, tmp_path, run_folder)
    for (_, _, end, _, _, _), (_, start, _, _, _, _) in zip(rows, rows[1:]):
        assert start >= end  # nobody read the champion while another contender was between read and promote
    assert any(asked < end for (_, _, end, _, _, _), (*_, asked) in zip(rows, rows[1:]))  # they did contend
    # one promotion order: each contender compared with (and replaced) the previous one's version
    assert [r[4] for r in rows] == [None] + [r[3] for r in rows[:-1]]
    promoted = [v for v in reg.list() if v.status == "promoted"]
    assert [v.id for v in promoted] == [rows[-1][3]]


def test_the_lock_is_reentrant_in_a_thread_and_times_out_for_others(settings, run_folder):
    import threading

    reg = ModelRegistry.from_settings(settings)
    v = reg.register(run_folder, metrics=_metrics(0.4))
    other = ModelRegistry(settings.training.registry_url.get_secret_value(), lock_timeout_s=0.3)
    errors = []
    with reg.promotion_lock():
        reg.set_status(v.id, "promoted", "inside the lock")  # takes it again: no deadlock
        t = threading.Thread(target=lambda: errors.append(_try(other.promotion_lock)))
        t.start()
        t.join()
    assert isinstance(errors[0], LockTimeout)
    assert _try(other.promotion_lock) is None  # released


def _try(lock):
    try:
        with lock():
            return None
    except Exception as exc:
        return exc


def test_publishing_is_refused_once_another_version_is_promoted(settings, run_folder):
    reg = ModelRegistry.from_settings(settings)
    first = reg.register(run_folder, metrics=_metrics(0.4))
    reg.set_status(first.id, "promoted", "first")
    with reg.holding_promotion(first.id) as current:
        assert current.id == first.id
    second = reg.register(run_folder, metrics=_metrics(0.5))
    reg.set_status(second.id, "promoted", "second")
    with pytest.raises(Superseded, match=f"promoted now: {second.id}"):
        with reg.holding_promotion(first.id):
            pass
