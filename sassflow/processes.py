"""Process helpers for whatever sassflow starts (Kafka, Redis, PostgreSQL, Airflow, the HTTP service,
consumer processes): free loopback ports, liveness checks, stopping a process, and the environment
that hands the settings to a child."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from sassflow.settings import PROJECT_ROOT, Settings, settings_env


def free_port() -> int:
    """A loopback TCP port that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def pid_alive(pid: int) -> bool:
    """Alive and not a zombie.  The state is the field after the *last* ')' of /proc/<pid>/stat:
    some programs rename their processes (Airflow: "airflow api_server -- …"), so names have spaces."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def stop_child(proc: subprocess.Popen, timeout: float) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``timeout``; always reaped."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def stop_pid(pid: int, timeout: float) -> None:
    """SIGTERM a process that is not our ``Popen`` child (found by a pid file), SIGKILL it if it has not
    exited within ``timeout``; reaped if it happens to be our child."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        if not pid_alive(pid):
            return
        time.sleep(0.2)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


# Importing feast points these at a temporary folder of the importing process (its metrics module
# sets them for gunicorn); a child that inherited them would store its Prometheus values in its
# parent's folder, shared with every sibling.  A child that wants multiprocess metrics sets its own.
PROMETHEUS_MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"  # the name prometheus_client reads when it is imported
PROMETHEUS_DIR_VARIABLES = (PROMETHEUS_MULTIPROC_DIR, "prometheus_multiproc_dir", "PROMETHEUS_MULTIPROCESS_DIR")


def child_env(settings: Settings, drop: tuple[str, ...] = ("SASSFLOW_",)) -> dict[str, str]:
    """The environment of a child process that must see exactly ``settings``: this process's
    environment without the variables starting with ``drop`` (nor ``PROMETHEUS_DIR_VARIABLES``), plus
    ``settings_env(settings)``, no
    ``sassflow.toml`` of its cwd, and the project on ``PYTHONPATH``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop) and k not in PROMETHEUS_DIR_VARIABLES}
    env.update(settings_env(settings))
    env["SASSFLOW_CONFIG"] = os.devnull  # the child's settings come only from the variables above
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")]))
    return env
