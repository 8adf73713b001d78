"""Fixtures of the migration tests: the app database on SQLite or PostgreSQL.

PostgreSQL: `CLARITY_TEST_POSTGRES_URL` if set (a fresh database per test is created on
that server), else a private cluster started once per session with initdb + pg_ctl (as
the `postgres` user via runuser when running as root) on a free port.
"""

from __future__ import annotations

import uuid

import pytest
import sqlalchemy as sa

from app.db import migrate
from app.db.engine import get_engine, reset_engines
from app.jobs.settings import reset_handler_settings_cache
from app.migration.config import reset_migration_settings_cache
from app.queue_service import reset_dispatchers


@pytest.fixture(scope="session")
def postgres_admin_url(postgres_server_url):
    """The session's PostgreSQL server (tests/conftest.py): one cluster for the whole run."""
    return postgres_server_url


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
