"""A throwaway PostgreSQL cluster on loopback, for Airflow's metadata database.

Debian's ``postgresql`` package ships ``initdb``/``pg_ctl`` under ``/usr/lib/postgresql/<v>/bin``; we
run our own cluster from a data directory (never the packaged service), listening on 127.0.0.1 only,
with no Unix socket, password (scram-sha-256) authentication and a generated password kept beside
the data.  PostgreSQL refuses to run as root, so when we are root every server-side command runs as
the ``postgres`` system user (``runuser``) and the cluster's root directory is handed to that user.
"""
from __future__ import annotations

import glob
import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

SERVER_USER = "postgres"  # the Debian package's system user, used when we are root


def find_bin(name: str) -> Path | None:
    """``name`` from the newest /usr/lib/postgresql/<v>/bin, else from PATH."""
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                   key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    if found:
        return Path(found[-1])
    which = shutil.which(name)
    return Path(which) if which else None


def ensure_installed() -> Path:
    """The bin folder of an installed PostgreSQL; installs Debian's package when we are root."""
    initdb = find_bin("initdb")
    if initdb is None:
        if os.geteuid() != 0:
            raise RuntimeError("PostgreSQL is not installed: run `sudo apt-get install -y postgresql`")
        print("installing Debian's postgresql package", file=sys.stderr)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "postgresql"],
                       check=True, env=env)
        # The package starts its own cluster on 5432; ours runs elsewhere, so stop that one.
        subprocess.run(["service", "postgresql", "stop"], check=False, capture_output=True)
        initdb = find_bin("initdb")
        if initdb is None:
            raise RuntimeError("apt-get installed postgresql but initdb is still missing")
    return initdb.parent


class LocalPostgres:
    """One cluster under ``root`` (``root/data``, ``root/postgres.log``, ``root/password``)."""

    def __init__(self, root: Path, port: int = 15432, host: str = "127.0.0.1",
                 user: str = "sassflow", database: str = "airflow"):
        self.root = Path(root).absolute()
        self.data_dir = self.root / "data"
        self.log_file = self.root / "postgres.log"
        self.password_file = self.root / "password"
        self.port, self.host, self.user, self.database = port, host, user, database

    # --- running commands as a user PostgreSQL accepts
    @staticmethod
    def _as_server_user(cmd: list[str]) -> list[str]:
        return ["runuser", "-u", SERVER_USER, "--", *cmd] if os.geteuid() == 0 else cmd

    def _run(self, cmd: list[str], **kw) -> subprocess.CompletedProcess:
        # LC_ALL=C: initdb must not depend on the locales a minimal image happens to have.
        env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
        return subprocess.run(self._as_server_user(cmd), env=env, cwd="/", **kw)

    def _prepare_root(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.root, SERVER_USER, SERVER_USER)
            os.chmod(self.root, 0o700)
            # Every parent must be traversable by the server user (pytest's /tmp/pytest-of-root is not).
            probe = self._run(["test", "-w", str(self.root)], capture_output=True)
            if probe.returncode != 0:
                raise RuntimeError(f"{self.root} is not reachable by the '{SERVER_USER}' user "
                                   f"(a parent directory is private); pick a data dir under a readable path")

    def password(self) -> str:
        if not self.password_file.exists():
            self.root.mkdir(parents=True, exist_ok=True)
            self.password_file.write_text(secrets.token_urlsafe(24))
            os.chmod(self.password_file, 0o600)
            if os.geteuid() == 0:
                shutil.chown(self.password_file, SERVER_USER, SERVER_USER)
        return self.password_file.read_text().strip()

    def url(self) -> str:
        """The SQLAlchemy URL of the database (password included)."""
        return f"postgresql+psycopg2://{self.user}:{self.password()}@{self.host}:{self.port}/{self.database}"

    # --- lifecycle
    def _initdb(self, bindir: Path) -> None:
        if (self.data_dir / "PG_VERSION").exists():
            return
        self.password()
        r = self._run([str(bindir / "initdb"), "-D", str(self.data_dir), "-U", self.user, "-E", "UTF8",
                       "--locale=C", "--auth-local=reject", "--auth-host=scram-sha-256",
                       f"--pwfile={self.password_file}"], capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"initdb failed:\n{r.stdout}\n{r.stderr}")

    def running(self) -> bool:
        pg_ctl = find_bin("pg_ctl")
        if pg_ctl is None or not (self.data_dir / "PG_VERSION").exists():
            return False
        return self._run([str(pg_ctl), "status", "-D", str(self.data_dir)], capture_output=True).returncode == 0

    def start(self, timeout: float = 60.0) -> None:
        bindir = ensure_installed()
        self._prepare_root()
        self._initdb(bindir)
        if not self.running():
            opts = (f"-c listen_addresses={self.host} -p {self.port} -c unix_socket_directories='' "
                    f"-c max_connections=200 -c fsync=off")  # a throwaway dev cluster: speed over durability
            r = self._run([str(bindir / "pg_ctl"), "start", "-w", "-t", str(int(timeout)), "-D", str(self.data_dir),
                           "-l", str(self.log_file), "-o", opts], capture_output=True, text=True)
            if r.returncode != 0:
                log = self.log_file.read_text()[-3000:] if self.log_file.exists() else ""
                raise RuntimeError(f"pg_ctl start failed:\n{r.stdout}\n{r.stderr}\n{log}")
        self._create_database(timeout)

    def _create_database(self, timeout: float) -> None:
        import psycopg2

        deadline = time.monotonic() + timeout
        while True:
            try:
                conn = psycopg2.connect(host=self.host, port=self.port, user=self.user,
                                        password=self.password(), dbname="postgres", connect_timeout=5)
                break
            except psycopg2.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (self.database,))
                if cur.fetchone() is None:
                    cur.execute(f'CREATE DATABASE "{self.database}"')
        finally:
            conn.close()

    def stop(self) -> bool:
        """Stops the server if it runs; True when it was running."""
        if not self.running():
            return False
        pg_ctl = find_bin("pg_ctl")
        self._run([str(pg_ctl), "stop", "-m", "fast", "-w", "-D", str(self.data_dir)], check=True,
                  capture_output=True)
        return True
