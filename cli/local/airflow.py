"""A local Airflow 3 running the project's DAGs (`sassflow airflow up|down|status`).

Three processes, as in production: ``api-server`` (UI + REST API + the execution API tasks talk to),
``scheduler`` (with the LocalExecutor, which forks the task workers) and ``dag-processor`` (parses
``dags/``).  ``AIRFLOW_HOME`` is ``settings.airflow.home``; the metadata database is
``settings.airflow.sql_alchemy_conn``, else a throwaway local PostgreSQL with ``--postgres``
(``cli.local.postgres``), else SQLite in the home folder.

Every Airflow process gets the same environment (``LocalAirflow.env``): the Airflow configuration as
``AIRFLOW__*`` variables and the whole sassflow ``Settings`` as ``SASSFLOW_*`` variables
(``sassflow.processes.child_env``), so a task that builds ``Settings()`` sees exactly the settings of
whoever started Airflow.
"""
from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

from sassflow.settings import PROJECT_ROOT, Settings
from sassflow.processes import child_env, pid_alive

DAGS_FOLDER = PROJECT_ROOT / "dags"
COMPONENTS = ("api-server", "scheduler", "dag-processor")
ADMIN_USER = "admin"


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass


class LocalAirflow:
    """The three Airflow components of one AIRFLOW_HOME, started detached and found again by pid files."""

    def __init__(self, settings: Settings, postgres: bool | None = None):
        self.settings = settings
        self.cfg = settings.airflow
        self.home = Path(self.cfg.home)
        self.state_file = self.home / "sassflow-local.json"
        if postgres is None:  # `down`/`status` reuse what `up` chose
            postgres = self._state().get("postgres", False)
        self.postgres = None
        if postgres and not self.cfg.sql_alchemy_conn:
            from cli.local.postgres import LocalPostgres

            self.postgres = LocalPostgres(self.home / "postgres", port=self.cfg.postgres_port)

    # --- configuration
    @property
    def url(self) -> str:
        return f"http://{self.cfg.host}:{self.cfg.port}"

    def _state(self) -> dict:
        try:
            return json.loads(self.state_file.read_text())
        except (FileNotFoundError, ValueError):
            return {}

    def _secret(self, name: str) -> str:
        """A random secret kept in the home folder: every component must sign/verify with the same one."""
        path = self.home / f".{name}"
        if not path.exists():
            self.home.mkdir(parents=True, exist_ok=True)
            path.write_text(secrets.token_urlsafe(32))
            path.chmod(0o600)
        return path.read_text().strip()

    def sql_alchemy_conn(self) -> str:
        if self.cfg.sql_alchemy_conn:
            return self.cfg.sql_alchemy_conn.get_secret_value()
        if self.postgres is not None:
            return self.postgres.url()
        return f"sqlite:///{self.home / 'airflow.db'}"

    def env(self) -> dict[str, str]:
        # Tasks see exactly these settings (not a sassflow.toml of their cwd) and no AIRFLOW* of ours.
        env = child_env(self.settings, drop=("AIRFLOW", "SASSFLOW_"))
        env.update({
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_FOLDER),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": "2",  # 2 cores; training tasks use both anyway
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": self.sql_alchemy_conn(),
            # Task workers reach the api-server here; the default (localhost:8080) is wrong on any other port.
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.url}/execution/",
            "AIRFLOW__API__HOST": self.cfg.host,
            "AIRFLOW__API__PORT": str(self.cfg.port),
            "AIRFLOW__API__BASE_URL": self.url,
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__API__SECRET_KEY": self._secret("api_secret_key"),
            "AIRFLOW__API_AUTH__JWT_SECRET": self._secret("jwt_secret"),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN_USER}:admin",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
            # Tasks import torch/faiss after the LocalExecutor forked them; keep their thread pools small.
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
        })
        return env

    def airflow(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        """Run one ``airflow`` CLI command with this environment; raises with its output on failure."""
        r = subprocess.run([sys.executable, "-m", "airflow", *args], env=self.env(), capture_output=True,
                           text=True, timeout=timeout, cwd=self.home)
        if r.returncode != 0:
            raise RuntimeError(f"airflow {' '.join(args)} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
        return r

    # --- lifecycle
    def _pid_file(self, component: str) -> Path:
        return self.home / f"{component}.sassflow.pid"

    def pid(self, component: str) -> int | None:
        try:
            pid = int(self._pid_file(component).read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        return pid if pid_alive(pid) else None

    def healthy(self) -> bool:
        import httpx

        try:
            return httpx.get(f"{self.url}/api/v2/monitor/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def up(self, timeout: float = 240) -> dict:
        self.home.mkdir(parents=True, exist_ok=True)
        if self.postgres is not None:
            print(f"starting PostgreSQL on 127.0.0.1:{self.postgres.port}", file=sys.stderr)
            self.postgres.start()
        self.state_file.write_text(json.dumps({"postgres": self.postgres is not None}))
        print("migrating the metadata database", file=sys.stderr)
        self.airflow("db", "migrate")
        env = self.env()
        (self.home / "logs").mkdir(exist_ok=True)
        for component in COMPONENTS:
            if self.pid(component):
                continue
            args = ["api-server", "--host", self.cfg.host, "--port", str(self.cfg.port)] \
                if component == "api-server" else [component]
            with open(self.home / "logs" / f"{component}.out", "ab") as out:
                proc = subprocess.Popen([sys.executable, "-m", "airflow", *args], env=env, cwd=self.home,
                                        stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        start_new_session=True)  # its own process group: `down` stops all of it
            self._pid_file(component).write_text(str(proc.pid))
        deadline = time.monotonic() + timeout
        while not self.healthy():
            dead = [c for c in COMPONENTS if not self.pid(c)]
            if dead or time.monotonic() > deadline:
                tail = "".join((self.home / "logs" / f"{c}.out").read_text()[-2000:] for c in dead or COMPONENTS)
                raise RuntimeError(f"airflow did not come up ({'exited: ' + ', '.join(dead) if dead else 'timeout'}):\n{tail}")
            time.sleep(1)
        return self.status()

    def down(self, timeout: float = 30) -> dict:
        pids = {c: self.pid(c) for c in COMPONENTS}
        for pid in filter(None, pids.values()):
            _signal_group(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        # api-server last: it waits for its open connections, e.g. from task workers the scheduler forked,
        # which the SIGKILL of the scheduler's group ends.
        for component, pid in reversed(pids.items()):
            if pid:
                while pid_alive(pid) and time.monotonic() < deadline:
                    time.sleep(0.2)
                _signal_group(pid, signal.SIGKILL)  # anything left of its group (forked task workers)
                try:
                    os.waitpid(pid, os.WNOHANG)  # reap it if it is our child
                except ChildProcessError:
                    pass
            self._pid_file(component).unlink(missing_ok=True)
        if self.postgres is not None:
            self.postgres.stop()
        return self.status()

    def status(self) -> dict:
        return {
            "ui": self.url,
            "healthy": self.healthy(),
            "components": {c: self.pid(c) for c in COMPONENTS},
            "airflow_home": str(self.home),
            "dags_folder": str(DAGS_FOLDER),
            "database": "postgres" if self.postgres is not None else self.sql_alchemy_conn().split(":")[0],
            "login": {"user": ADMIN_USER, "passwords_file": str(self.passwords_file)},
        }

    # --- REST API v2
    @property
    def passwords_file(self) -> Path:
        return self.home / "simple_auth_manager_passwords.json.generated"

    def token(self) -> str:
        """A JWT for the REST API: ``POST /auth/token`` with the simple auth manager's generated password."""
        import httpx

        password = json.loads(self.passwords_file.read_text())[ADMIN_USER]
        r = httpx.post(f"{self.url}/auth/token", json={"username": ADMIN_USER, "password": password}, timeout=30)
        r.raise_for_status()
        return r.json()["access_token"]

    def client(self):
        import httpx

        return httpx.Client(base_url=f"{self.url}/api/v2", timeout=30,
                            headers={"Authorization": f"Bearer {self.token()}"})

