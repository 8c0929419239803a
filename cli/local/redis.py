"""A throwaway local redis-server (Debian's ``redis-server`` binary) for tests and benchmarks.

Binds 127.0.0.1 only.  Append-only persistence in ``workdir`` so that a stop/start on the same
port (the outage test) keeps the data, as a production Redis with AOF would.
"""
from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

from sassflow.processes import stop_child


class LocalRedis:
    def __init__(self, port: int, workdir: Path):
        self.port = port
        self.workdir = Path(workdir)
        self.proc: subprocess.Popen | None = None

    @property
    def connection_string(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 15.0) -> "LocalRedis":
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server not found: apt-get install -y redis-server")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [exe, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "yes", "--appendfsync", "everysec",
             "--dir", str(self.workdir), "--protected-mode", "yes"],
            stdout=open(self.workdir / "redis.log", "ab"), stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server did not answer on port {self.port}")

    def stop(self) -> None:
        if self.proc is not None:
            stop_child(self.proc, timeout=10)
            self.proc = None
