"""Fixtures for the handler tests: the app database on SQLite and PostgreSQL, a fake
aggregator, a real SMTP server (aiosmtpd) and a private Redis.

PostgreSQL: CLARITY_TEST_POSTGRES_URL if set (a server whose user may CREATE DATABASE),
otherwise a throwaway cluster started with initdb/pg_ctl (app/devstack/postgres.py). Set
CLARITY_TEST_SKIP_POSTGRES=1 to run the SQLite half only.
"""

from __future__ import annotations

import secrets
import uuid

import pytest
import sqlalchemy as sa

from app.db import migrate
from app.db.engine import create_db_engine, reset_engines
from app.db.schema import metadata
from app.devstack.fake_aggregator import CLIENT_ID, CLIENT_SECRET, FakeAggregator
from app.devstack.postgres import create_database_at
from app.devstack.processes import free_port
from app.devstack.redis_server import RedisServer
from app.jobs import aggregator as aggregator_module
from app.jobs import mailer
from app.jobs.settings import reset_handler_settings_cache
from tests.handlers.helpers import SIGNING_SECRET, WEBHOOK_SECRET, CapturingHandler
from worker import hueys
from worker.settings import reset_settings_cache

# -- databases ---------------------------------------------------------------------------

@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def database(request, tmp_path_factory):
    """(url, engine) of a migrated database; one per backend per session."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'clarity.db'}"
    else:
        server = request.getfixturevalue("postgres_server_url")
        url = create_database_at(server, f"clarity_test_{uuid.uuid4().hex[:8]}")
    engine = create_db_engine(url)
    migrate.upgrade(engine=engine)
    yield url, engine
    engine.dispose()


def _truncate(engine: sa.Engine) -> None:
    tables = [t.name for t in reversed(metadata.sorted_tables)]
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql("TRUNCATE " + ", ".join(tables) + " RESTART IDENTITY CASCADE")
        else:
            for name in tables:
                conn.exec_driver_sql(f"DELETE FROM {name}")


@pytest.fixture
def handler_env(monkeypatch, tmp_path):
    """set(**env): handler settings from the environment, caches reset around the test."""
    monkeypatch.setenv("CLARITY_ENV_FILE", "/nonexistent.env")
    monkeypatch.setenv("STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("WEBHOOK_SECRETS", f"yodlee={WEBHOOK_SECRET}")
    monkeypatch.setenv("SMTP_SECURITY", "none")

    def apply(**env):
        for key, value in env.items():
            monkeypatch.setenv(key.upper(), str(value))
        reset_handler_settings_cache()
        reset_engines()
        aggregator_module.reset_client()

    apply()
    yield apply
    reset_handler_settings_cache()
    reset_engines()
    aggregator_module.reset_client()
    mailer._local.__dict__.clear()


@pytest.fixture
def db(database, handler_env):
    """An empty, migrated database that the handlers use (DATABASE_URL points at it)."""
    url, engine = database
    _truncate(engine)
    handler_env(database_url=url)
    return engine


# -- aggregator --------------------------------------------------------------------------

@pytest.fixture
def fake_aggregator(handler_env):
    fake = FakeAggregator().start()
    handler_env(aggregator_base_url=fake.url, aggregator_client_id=CLIENT_ID,
                aggregator_client_secret=CLIENT_SECRET, aggregator_page_size=50)
    yield fake
    fake.stop()


# -- SMTP --------------------------------------------------------------------------------

@pytest.fixture
def smtp_server(handler_env):
    from aiosmtpd.controller import Controller

    handler = CapturingHandler()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    handler_env(smtp_host="127.0.0.1", smtp_port=port, smtp_security="none",
                smtp_from="Income Clarity <no-reply@clarity.test>")
    yield handler
    mailer._local.__dict__.clear()
    controller.stop()


# -- Redis -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def handler_redis(tmp_path_factory):
    """A private redis-server from the repo's redis.conf, one per test module (the config
    renames FLUSHDB/FLUSHALL/KEYS, so modules are isolated by server instead)."""
    server = RedisServer(tmp_path_factory.mktemp("redis"), password=secrets.token_hex(12),
                         extra=("--appendonly", "no")).start()
    yield {"port": server.port, "password": server.password}
    server.stop()


@pytest.fixture
def queue_env(handler_redis, handler_env, monkeypatch):
    """Producer settings pointing at the module's Redis, with a fresh key prefix."""
    monkeypatch.setenv("REDIS_HOST", "127.0.0.1")
    monkeypatch.setenv("REDIS_PORT", str(handler_redis["port"]))
    monkeypatch.setenv("REDIS_PASSWORD", handler_redis["password"])
    monkeypatch.setenv("JOB_SIGNING_SECRET", SIGNING_SECRET)
    monkeypatch.setenv("REDIS_KEY_PREFIX", f"h{uuid.uuid4().hex[:8]}")
    monkeypatch.delenv("REDIS_URL", raising=False)
    reset_settings_cache()
    hueys.reset_caches()
    yield handler_redis
    reset_settings_cache()
    hueys.reset_caches()


