"""Run the HTTP service in a child process (tests and benchmarks).

The child is started with ``subprocess`` (fork + immediate exec), never by
forking a Python process in which FAISS or torch thread pools already run,
and gets ``OMP_NUM_THREADS`` in its environment so OpenMP sizes itself before
the first import.  The child's settings are this process's settings, passed
as ``SASSFLOW_*`` environment variables.
"""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx

from sassflow.processes import child_env, free_port, stop_child
from sassflow.settings import PROJECT_ROOT, Settings


class ServerProcess:
    """``sassflow serve`` in a child process on a free loopback port."""

    def __init__(self, settings: Settings, static_features: Path | None = None, log_path: Path | None = None):
        self.port = free_port()
        self.settings = settings.model_copy(update={"serving": settings.serving.model_copy(update={"port": self.port})})
        self.url = f"http://127.0.0.1:{self.port}"
        env = child_env(self.settings)
        env["OMP_NUM_THREADS"] = str(settings.serving.omp_threads)
        cmd = [sys.executable, "-m", "cli.main", "serve"]
        if static_features:
            cmd += ["--static-features", str(static_features)]
        self.log_path = log_path
        self._log = open(log_path, "ab") if log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(cmd, env=env, cwd=PROJECT_ROOT, stdout=self._log, stderr=self._log)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self, timeout: float = 120.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}; log: {self.log_path}")
            try:
                answers = [self._ready() for _ in range(self._probes)]
                if all(answers):
                    return answers[-1]
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"server not ready after {timeout}s; log: {self.log_path}")

    @property
    def _probes(self) -> int:
        """Several workers share the port: ready once answers on many fresh connections all say so
        (each worker loads the bundle itself)."""
        workers = self.settings.serving.workers
        return 1 if workers == 1 else 10 * workers

    def _ready(self) -> dict | None:
        r = httpx.get(self.url + "/readyz", timeout=2.0)  # a fresh connection each
        return r.json() if r.status_code == 200 else None

    def stop(self) -> None:
        stop_child(self.proc, timeout=20)
        if self._log is not subprocess.DEVNULL:
            self._log.close()

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
