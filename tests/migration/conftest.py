"""Fixtures of the migration tests: the app database on SQLite or PostgreSQL.

PostgreSQL: `CLARITY_TEST_POSTGRES_URL` if set (a fresh database per test is created on
that server), else a private cluster started once per session with initdb + pg_ctl (as
the `postgres` user via runuser when running as root) on a free port.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

from app.migration.config import reset_migration_settings_cache
from app.queue_service import reset_dispatchers
from tests.conftest import wait_for
from worker.db import migrate
from worker.db.engine import get_engine, reset_engines
from worker.handler_settings import reset_handler_settings_cache

PG_ENV = "CLARITY_TEST_POSTGRES_URL"
PG_BIN = Path("/usr/lib/postgresql/15/bin")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivatePostgres:
    def __init__(self):
        self.base = Path(tempfile.mkdtemp(prefix="clarity-mig-pg-"))
        self.data = self.base / "data"
        self.port = _free_port()
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def _run(self, *args, check=True):
        return subprocess.run([*self.as_user, *map(str, args)], check=check,
                              capture_output=True, text=True, timeout=120)

    def start(self):
        if self.as_user:
            info = pwd.getpwnam("postgres")
            os.chown(self.base, info.pw_uid, info.pw_gid)
            os.chmod(self.base, 0o755)
        self._run(PG_BIN / "initdb", "-D", self.data, "-U", "clarity", "-A", "trust",
                  "-E", "UTF8", "--no-locale", "--no-sync")
        options = (f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 "
                   "-c fsync=off -c synchronous_commit=off -c max_connections=100")
        result = self._run(PG_BIN / "pg_ctl", "-D", self.data, "-o", options, "-l",
                           self.base / "server.log", "-w", "-t", "60", "start", check=False)
        if result.returncode != 0:
            raise RuntimeError(f"pg_ctl start failed: {result.stderr}")
        return self

    @property
    def admin_url(self) -> str:
        return f"postgresql+psycopg://clarity@127.0.0.1:{self.port}/postgres"

    def stop(self):
        self._run(PG_BIN / "pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop",
                  check=False)
        shutil.rmtree(self.base, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_admin_url():
    if os.environ.get(PG_ENV):
        yield os.environ[PG_ENV]
        return
    if not (PG_BIN / "initdb").exists():
        pytest.skip(f"PostgreSQL 15 is not installed and {PG_ENV} is not set")
    cluster = PrivatePostgres().start()
    yield cluster.admin_url
    cluster.stop()


_templates: dict[str, str] = {}


def _url(admin_url: str, name: str) -> str:
    return sa.engine.make_url(admin_url).set(database=name).render_as_string(
        hide_password=False)


def _create_database(admin_url: str) -> str:
    """A fresh database at the latest revision, copied from a template migrated once."""
    engine = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            template = _templates.get(admin_url)
            if template is None:
                template = f"clarity_mig_tmpl_{uuid.uuid4().hex[:8]}"
                conn.execute(sa.text(f'CREATE DATABASE "{template}"'))
                tmpl_engine = sa.create_engine(_url(admin_url, template))
                migrate.upgrade(engine=tmpl_engine)
                tmpl_engine.dispose()
                _templates[admin_url] = template
            name = f"clarity_mig_{uuid.uuid4().hex[:10]}"
            conn.execute(sa.text(f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))
    finally:
        engine.dispose()
    return _url(admin_url, name)


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request, tmp_path, monkeypatch):
    """DATABASE_URL for this test (SQLite file or a fresh PostgreSQL database), migrated
    to head; yields the URL."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'clarity.db'}"
    else:
        url = _create_database(request.getfixturevalue("postgres_admin_url"))
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("CLARITY_ENV_FILE", "/nonexistent.env")
    reset_handler_settings_cache()
    reset_engines()
    migrate.upgrade(engine=get_engine())
    yield url
    reset_engines()
    reset_handler_settings_cache()


@pytest.fixture
def migration_env(monkeypatch):
    """migration_env(**vars): set migration variables for this process; caches reset."""

    def apply(**values):
        for key, value in values.items():
            monkeypatch.setenv(key.upper(), str(value))
        reset_migration_settings_cache()
        reset_dispatchers()

    yield apply
    reset_migration_settings_cache()
    reset_dispatchers()


def wait_until(predicate, timeout=30.0, interval=0.05, message="condition"):
    return wait_for(predicate, timeout=timeout, interval=interval, message=message)
