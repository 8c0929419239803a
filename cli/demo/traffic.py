"""The demo's clients: steady /recommend traffic during the hot swap, and sample answers."""
from __future__ import annotations

import threading
import time


class LoadDuringSwap:
    """Steady /recommend traffic from background threads; records every answer's status and bundle."""

    def __init__(self, url: str, keys: list[tuple[int, str]], threads: int = 4):
        self.url, self.keys, self.threads = url, keys, threads
        self.stop_flag = threading.Event()
        self.lock = threading.Lock()
        self.requests = 0
        self.failed: list[str] = []
        self.latency_ms: list[float] = []
        self.first_seen: dict[str, float] = {}
        self._workers: list[threading.Thread] = []

    def _run(self, seed: int) -> None:
        import random

        import httpx

        rng = random.Random(seed)
        with httpx.Client(base_url=self.url, timeout=10.0) as client:
            while not self.stop_flag.is_set():
                user, scenario = rng.choice(self.keys)
                t0 = time.perf_counter()
                try:
                    r = client.get("/recommend", params={"user_id": user, "scenario": scenario, "k": 20})
                    ok = r.status_code == 200
                    bundle = r.json().get("bundle_id") if ok else None
                    err = None if ok else f"HTTP {r.status_code}: {r.text[:200]}"
                except Exception as exc:  # a failed request is what this counts
                    ok, bundle, err = False, None, repr(exc)
                dt = (time.perf_counter() - t0) * 1000
                with self.lock:
                    self.requests += 1
                    self.latency_ms.append(dt)
                    if not ok:
                        self.failed.append(err)
                    elif bundle not in self.first_seen:
                        self.first_seen[bundle] = time.time()

    def __enter__(self) -> "LoadDuringSwap":
        self._workers = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(self.threads)]
        for w in self._workers:
            w.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop_flag.set()
        for w in self._workers:
            w.join(15)

    def summary(self) -> dict:
        import numpy as np

        lat = np.array(self.latency_ms) if self.latency_ms else np.zeros(1)
        return {"requests": self.requests, "failed": len(self.failed), "failures": self.failed[:5],
                "p50_ms": round(float(np.percentile(lat, 50)), 2), "p99_ms": round(float(np.percentile(lat, 99)), 2),
                "bundles_seen": list(self.first_seen)}


def sample_recommendations(url: str, users: list[int], scenarios: list[str]) -> list[dict]:
    import httpx

    rows = []
    with httpx.Client(base_url=url, timeout=10.0) as client:
        for scenario in scenarios:
            for user in users:
                r = client.get("/recommend", params={"user_id": user, "scenario": scenario, "k": 10})
                body = r.json()
                rows.append({"user_id": user, "scenario": scenario, "status": r.status_code,
                             "fallback": body.get("fallback"), "items": body.get("items", [])[:10],
                             "branches": body.get("branches", [])[:10], "reasons": body.get("reasons", [])[:10],
                             "ranked": body.get("ranked"), "bundle_id": body.get("bundle_id"),
                             "model_version": body.get("model_version")})
    return rows
