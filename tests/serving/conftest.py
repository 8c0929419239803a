"""One real HTTP service per session over a small synthetic catalog (mean-history tower)."""
from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from serving import metrics
from serving.bundle import build_synthetic_bundle, publish_bundle
from serving.feature_reader import save_recent_clicks
from cli.local.server import ServerProcess
from serving.synthetic import synthetic_catalog, synthetic_users
from tests.conftest import make_settings

N_ITEMS = 10_000  # 2,000 per scenario: above the exact threshold below, so IVF is exercised
DIM = 32
N_USERS = 200
ADMIN_TOKEN = "test-admin-token-0123456789abcdef"  # >= 32 characters


def serving_settings(state_dir: Path, **serving):
    return make_settings(
        state_dir,
        # FAISS IVF here (its file names are what the integrity tests tamper with); the hnswlib
        # default has its own bundle tests (test_ann_backends.py)
        serving={"exact_index_max_items": 1_000, "watch_interval_s": 0.2, "admin_token": ADMIN_TOKEN,
                 "ann_backend": "faiss", **serving},
    )


@pytest.fixture(scope="session")
def catalog():
    from sassflow.settings import DEFAULT_SCENARIOS

    return synthetic_catalog(N_ITEMS, DIM, DEFAULT_SCENARIOS, seed=1)


@pytest.fixture(scope="session")
def users(catalog):
    return synthetic_users(catalog, N_USERS, seed=1)


@pytest.fixture(scope="session")
def server(tmp_path_factory, users):
    """The service, serving a published synthetic bundle; tests may swap and roll back."""
    state = tmp_path_factory.mktemp("serving")
    settings = serving_settings(state)
    first = build_synthetic_bundle(settings, N_ITEMS, DIM, seed=1)
    publish_bundle(settings, first.name)
    features = state / "features.npz"
    save_recent_clicks(features, settings.scenarios, users)
    srv = ServerProcess(settings, static_features=features, log_path=state / "server.log")
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


@pytest.fixture()
def client(server):
    with httpx.Client(base_url=server.url, timeout=30.0) as c:
        yield c


def admin_headers(token: str = ADMIN_TOKEN) -> dict:
    return {"Authorization": f"Bearer {token}"}


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")


def served_bundle(client) -> str:
    return client.get("/version").json()["bundle_id"]


def metric_value(client, name: str) -> float:
    return metrics.metric_value(client.get("/metrics").text, name)


def tamper(bundle: Path, rel: str, data: bytes) -> None:
    """Replace file ``rel`` of a (read-only) bundle and record its new checksum in the manifest:
    a bundle whose checksums all match but whose content is wrong."""
    import hashlib
    import os

    target = bundle / rel
    if target.exists():
        os.chmod(target, 0o644)
    target.write_bytes(data)
    edit_manifest(bundle, lambda m: put(m, ("files", rel), {"sha256": hashlib.sha256(data).hexdigest(),
                                                             "bytes": len(data)}))


def edit_manifest(bundle: Path, change) -> None:
    """Replace a bundle's manifest by ``change(manifest_dict)`` (its checksums are left as they are)."""
    import json
    import os

    path = bundle / "manifest.json"
    os.chmod(path, 0o644)
    path.write_text(json.dumps(change(json.loads(path.read_text()))))


def put(tree: dict, keys: tuple, value) -> dict:
    """``tree`` with ``tree[k0][k1]...= value``."""
    node = tree
    for key in keys[:-1]:
        node = node[key]
    node[keys[-1]] = value
    return tree


def drop(tree: dict, keys: tuple) -> dict:
    """``tree`` without ``tree[k0][k1]...``."""
    node = tree
    for key in keys[:-1]:
        node = node[key]
    del node[keys[-1]]
    return tree


def write_pointer(settings, raw: bytes) -> None:
    """Write CURRENT as another tool (or a hand) could, bypassing publish's checks."""
    Path(settings.serving.bundle_dir).mkdir(parents=True, exist_ok=True)
    (Path(settings.serving.bundle_dir) / "CURRENT").write_bytes(raw)
