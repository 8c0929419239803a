"""`sassflow serve` with several worker processes: every worker answers, /metrics sums them, and each
follows a newly published bundle on its own."""
from __future__ import annotations

import httpx
import psutil

from cli.local.server import ServerProcess
from serving.bundle import build_synthetic_bundle, publish_bundle
from serving.feature_reader import save_recent_clicks
from tests.serving.conftest import DIM, N_ITEMS, serving_settings, wait_for

WORKERS = 2


def _requests_total(text: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("sassflow_recommend_requests_total{"))


def test_workers_share_the_port_sum_their_metrics_and_follow_a_new_bundle(tmp_path, users):
    settings = serving_settings(tmp_path, workers=WORKERS)
    first = build_synthetic_bundle(settings, N_ITEMS, DIM, seed=1)
    publish_bundle(settings, first.name)
    features = tmp_path / "features.npz"
    save_recent_clicks(features, settings.scenarios, users)
    keys = list(users)[:40]
    with ServerProcess(settings, static_features=features, log_path=tmp_path / "server.log") as srv:
        srv.wait_ready()
        workers = psutil.Process(srv.pid).children(recursive=True)
        assert len([p for p in workers if "spawn_main" in " ".join(p.cmdline())]) == WORKERS
        # every worker must have loaded the bundle before the count below: each answers /readyz 200
        wait_for(lambda: all(httpx.get(srv.url + "/readyz").status_code == 200 for _ in range(10)))
        for user, scenario in keys:  # a fresh connection each: the workers accept them in turn
            r = httpx.get(srv.url + "/recommend", params={"user_id": user, "scenario": scenario, "k": 5})
            assert r.status_code == 200 and r.json()["bundle_id"] == first.name
        assert _requests_total(httpx.get(srv.url + "/metrics").text) == len(keys)

        second = build_synthetic_bundle(settings, N_ITEMS, DIM, seed=2)
        publish_bundle(settings, second.name)

        def all_on_second() -> bool:
            seen = {httpx.get(srv.url + "/version").json()["bundle_id"] for _ in range(20)}
            return seen == {second.name}
        wait_for(all_on_second, timeout=60)
        text = httpx.get(srv.url + "/metrics").text
        assert f'sassflow_bundle_info{{bundle_id="{second.name}",model_version="synthetic-2"}} 1.0' in text
        swaps = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                    if line.startswith("sassflow_bundle_swaps_total"))
        assert swaps == 2 * WORKERS  # the first load and the new bundle, in each worker
