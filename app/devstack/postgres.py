"""A private, throwaway PostgreSQL cluster for tests and the bench.

`CLARITY_TEST_POSTGRES_URL` set (e.g. by CI, `postgresql+psycopg://user:pw@127.0.0.1/db`):
that server is used and nothing is started. Otherwise `initdb` + `pg_ctl` create a cluster
in a temporary folder on a free port, trust authentication on 127.0.0.1 and a Unix socket
in the same folder. PostgreSQL refuses to run as root, so as root the cluster's folder is
handed to the `postgres` user and the server runs as that user (`runuser`).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from app.devstack.processes import free_port, real_clock_env

ENV_URL = "CLARITY_TEST_POSTGRES_URL"


def find_bindir() -> Path | None:
    configured = os.environ.get("CLARITY_TEST_POSTGRES_BINDIR")
    candidates = [configured] if configured else sorted(
        glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]),
        reverse=True)
    for path in candidates:
        if path and (Path(path) / "initdb").exists():
            return Path(path)
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class PostgresCluster:
    def __init__(self, base: Path | None = None):
        self.bindir = find_bindir()
        if self.bindir is None:
            raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql), "
                               f"and {ENV_URL} is not set")
        self.base = Path(base or tempfile.mkdtemp(prefix="clarity-pg-"))
        self.data = self.base / "data"
        self.port = free_port()
        self.user = None
        if os.geteuid() == 0:
            self.user = "postgres"
            pwd.getpwnam(self.user)  # KeyError if the package did not create it

    def _run(self, *args, check=True, timeout=120):
        cmd = [str(a) for a in args]
        if self.user:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=timeout,
                              env=real_clock_env())

    def start(self) -> PostgresCluster:
        self.base.mkdir(parents=True, exist_ok=True)
        if self.user:
            info = pwd.getpwnam(self.user)
            os.chown(self.base, info.pw_uid, info.pw_gid)
            # /tmp/<dir> must be traversable by the postgres user
            os.chmod(self.base, 0o755)
        try:
            self._run(self.bindir / "initdb", "-D", self.data, "-U", "clarity", "-A", "trust",
                      "-E", "UTF8", "--no-locale", "--no-sync")
        except subprocess.CalledProcessError as exc:
            raise RuntimeError(f"initdb failed: {exc.stderr or exc.stdout}") from None
        options = (f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 "
                   "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
                   "-c max_connections=50 -c shared_buffers=64MB")
        result = self._run(self.bindir / "pg_ctl", "-D", self.data, "-o", options, "-l",
                           self.base / "server.log", "-w", "-t", "60", "start", check=False)
        if result.returncode != 0:
            log = (self.base / "server.log")
            raise RuntimeError(f"pg_ctl start failed: {result.stderr}\n"
                               f"{log.read_text() if log.exists() else ''}")
        self._wait_ready()
        return self

    def _wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"PostgreSQL did not listen on port {self.port}")

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://clarity@127.0.0.1:{self.port}/postgres"

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=clarity dbname=postgres",
                             autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql+psycopg://clarity@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        if self.data.exists():
            self._run(self.bindir / "pg_ctl", "-D", self.data, "-m", "immediate", "-w",
                      "stop", check=False, timeout=60)
        shutil.rmtree(self.base, ignore_errors=True)


def create_database_at(url: str, name: str) -> str:
    """CREATE DATABASE `name` on the server of `url`; returns the new database's URL."""
    import sqlalchemy as sa

    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}"')
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    finally:
        engine.dispose()
    return sa.engine.make_url(url).set(database=name).render_as_string(hide_password=False)
