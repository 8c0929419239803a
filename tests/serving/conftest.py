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
ADMIN_TOKEN = "test-admin-token"


def serving_settings(state_dir: Path, **serving):
    return make_settings(
        state_dir,
        serving={"exact_index_max_items": 1_000, "watch_interval_s": 0.2, "admin_token": ADMIN_TOKEN, **serving},
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
