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

The same configuration is written to ``<home>/airflow.cfg`` (secrets as ``*_cmd`` options that read
them from 0600 files beside it, or from the environment variable the user set them in) and
``<home>/env.sh`` (``AIRFLOW_HOME`` and the non-secret sassflow settings), so a bare ``airflow``
command after ``source <home>/env.sh`` talks to exactly the deployment ``up`` runs.  ``up`` also
creates the training pool (``settings.airflow.training_pool``, one slot).
"""
from __future__ import annotations

import json
import os
import secrets
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from sassflow.files import write_text_atomic
from sassflow.settings import PROJECT_ROOT, Settings, settings_env
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

    def _secret_path(self, name: str) -> Path:
        """A random secret kept in the home folder (0600): every component must sign/verify with the same one."""
        path = self.home / f".{name}"
        if not path.exists():
            self.home.mkdir(parents=True, exist_ok=True)
            path.touch(mode=0o600)
            path.write_text(secrets.token_urlsafe(32))
        return path

    def _secret(self, name: str) -> str:
        return self._secret_path(name).read_text().strip()

    def sql_alchemy_conn(self) -> str:
        if self.cfg.sql_alchemy_conn:
            return self.cfg.sql_alchemy_conn.get_secret_value()
        if self.postgres is not None:
            return self.postgres.url()
        return f"sqlite:///{self.home / 'airflow.db'}"

    def config(self) -> dict[tuple[str, str], str]:
        """The Airflow configuration of this deployment, {(section, option): value}, secrets excluded."""
        config = {
            ("core", "dags_folder"): str(DAGS_FOLDER),
            ("core", "load_examples"): "False",
            ("core", "executor"): "LocalExecutor",
            ("core", "parallelism"): "2",  # 2 cores; training tasks use both anyway
            ("core", "dags_are_paused_at_creation"): "True",
            # Task workers reach the api-server here; the default (localhost:8080) is wrong on any other port.
            ("core", "execution_api_server_url"): f"{self.url}/execution/",
            ("core", "simple_auth_manager_users"): f"{ADMIN_USER}:admin",
            ("api", "host"): self.cfg.host,
            ("api", "port"): str(self.cfg.port),
            ("api", "base_url"): self.url,
            ("api", "workers"): "1",
            ("dag_processor", "refresh_interval"): "5",
            ("scheduler", "enable_health_check"): "False",
        }
        if self._conn_command() is None:
            config[("database", "sql_alchemy_conn")] = self.sql_alchemy_conn()
        return config

    def _conn_command(self) -> str | None:
        """How airflow.cfg reads the metadata DB URL when it holds a password: from the environment
        variable the user set it in, or from the 0600 file ``write_config`` keeps for the local
        PostgreSQL's; None for SQLite (no secret: the URL goes into airflow.cfg as it is)."""
        if self.cfg.sql_alchemy_conn:
            return "printenv SASSFLOW_AIRFLOW__SQL_ALCHEMY_CONN"
        if self.postgres is not None:
            return f"cat {shlex.quote(str(self.home / '.sql_alchemy_conn'))}"
        return None

    def secret_commands(self) -> dict[tuple[str, str], str]:
        """Sensitive options as the commands airflow.cfg runs to read them (Airflow's ``*_cmd``)."""
        commands = {("api", "secret_key"): f"cat {shlex.quote(str(self._secret_path('api_secret_key')))}",
                    ("api_auth", "jwt_secret"): f"cat {shlex.quote(str(self._secret_path('jwt_secret')))}"}
        conn = self._conn_command()
        if conn:
            commands[("database", "sql_alchemy_conn")] = conn
        return commands

    def env(self) -> dict[str, str]:
        # Tasks see exactly these settings (not a sassflow.toml of their cwd) and no AIRFLOW* of ours.
        env = child_env(self.settings, drop=("AIRFLOW", "SASSFLOW_"))
        env["AIRFLOW_HOME"] = str(self.home)
        env.update({f"AIRFLOW__{section.upper()}__{option.upper()}": value
                    for (section, option), value in self.config().items()})
        env.update({"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": self.sql_alchemy_conn(),
                    "AIRFLOW__API__SECRET_KEY": self._secret("api_secret_key"),
                    "AIRFLOW__API_AUTH__JWT_SECRET": self._secret("jwt_secret"),
                    # Tasks import torch/faiss after the LocalExecutor forked them; keep their thread pools small.
                    "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
        return env

    def write_config(self) -> dict[str, Path]:
        """``airflow.cfg`` and ``env.sh`` in the home folder: what a bare ``airflow`` command needs to be
        this deployment (``source <home>/env.sh``).  No secret is written into either."""
        self.home.mkdir(parents=True, exist_ok=True)
        if self.postgres is not None and not self.cfg.sql_alchemy_conn:
            conn_file = self.home / ".sql_alchemy_conn"
            conn_file.touch(mode=0o600)
            conn_file.write_text(self.sql_alchemy_conn())
        sections: dict[str, list[str]] = {}
        for (section, option), value in self.config().items():
            sections.setdefault(section, []).append(f"{option} = {value}")
        for (section, option), command in self.secret_commands().items():
            sections.setdefault(section, []).append(f"{option}_cmd = {command}")
        cfg = "# generated by `sassflow airflow up` (cli/local/airflow.py): edit sassflow settings, not this file\n"
        cfg += "".join(f"\n[{name}]\n" + "\n".join(lines) + "\n" for name, lines in sections.items())
        write_text_atomic(self.home / "airflow.cfg", cfg)
        write_text_atomic(self.home / "env.sh", self._env_script())
        return {"airflow_cfg": self.home / "airflow.cfg", "env_sh": self.home / "env.sh"}

    def _env_script(self) -> str:
        public = settings_env(self.settings, include_secrets=False)
        secret = sorted(set(settings_env(self.settings)) - set(public) - {f"SASSFLOW_{s.upper()}__{f.upper()}"
                                                                          for s, f in self.settings._derived})
        lines = ["# generated by `sassflow airflow up`: `source` it, then the bare `airflow` CLI is this deployment",
                 f"export AIRFLOW_HOME={shlex.quote(str(self.home))}",
                 f"export PYTHONPATH={shlex.quote(str(PROJECT_ROOT))}${{PYTHONPATH:+:$PYTHONPATH}}",
                 "export SASSFLOW_CONFIG=/dev/null  # the settings below, not a sassflow.toml of the cwd"]
        lines += [f"export {k}={shlex.quote(v)}" for k, v in sorted(public.items())]
        if secret:
            lines.append("# secret settings are never written to disk: if `up` had them, export them too: "
                         + ", ".join(secret))
        return "\n".join(lines) + "\n"

    def airflow(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        """Run one ``airflow`` CLI command with this environment; raises with its output on failure."""
        self.write_config()  # else the CLI writes a default airflow.cfg (wrong dags_folder) into the home
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
        self.ensure_pool()
        return self.status()

    def ensure_pool(self) -> None:
        """The training pool with one slot, unless it exists (an operator may have resized it)."""
        name = self.cfg.training_pool
        if name == "default_pool":
            return
        with self.client() as api:
            if api.get(f"/pools/{name}").status_code == 404:
                r = api.post("/pools", json={"name": name, "slots": 1, "include_deferred": False,
                                             "description": "sassflow heavy tasks (training, replay): one at a time"})
                if r.status_code not in (200, 201, 409):
                    raise RuntimeError(f"cannot create the Airflow pool {name!r}: {r.status_code} {r.text[:300]}")

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
            "env_file": str(self.home / "env.sh"),
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

