"""Fixtures for the handler tests: the app database on SQLite and PostgreSQL, a fake
aggregator, a real SMTP server (aiosmtpd) and a private Redis.

PostgreSQL: CLARITY_TEST_POSTGRES_URL if set (a server whose user may CREATE DATABASE),
otherwise a throwaway cluster started with initdb/pg_ctl (tests/pg.py). Set
CLARITY_TEST_SKIP_POSTGRES=1 to run the SQLite half only.
"""

from __future__ import annotations

import secrets
import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.fakes.aggregator_server import CLIENT_ID, CLIENT_SECRET, FakeAggregator
from tests.pg import create_database_at
from worker import aggregator as aggregator_module
from worker import hueys, mailer
from worker.db import migrate
from worker.db.engine import create_db_engine, reset_engines
from worker.db.schema import metadata
from worker.handler_settings import reset_handler_settings_cache
from worker.settings import reset_settings_cache

REPO = Path(__file__).resolve().parents[2]
WEBHOOK_SECRET = "whsec-test-0123456789abcdef"
SIGNING_SECRET = "handler-test-signing-secret-0123456789"


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

class CapturingHandler:
    """aiosmtpd handler: keeps accepted messages; `reply` set answers DATA with it."""

    def __init__(self):
        self.messages = []
        self.reply: str | None = None
        self.rcpt_reply: str | None = None

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if self.rcpt_reply:
            return self.rcpt_reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        if self.reply:
            return self.reply
        self.messages.append(envelope)
        return "250 Message accepted for delivery"


@pytest.fixture
def smtp_server(handler_env):
    from aiosmtpd.controller import Controller

    handler = CapturingHandler()
    port = _free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    handler_env(smtp_host="127.0.0.1", smtp_port=port, smtp_security="none",
                smtp_from="Income Clarity <no-reply@clarity.test>")
    yield handler
    mailer._local.__dict__.clear()
    controller.stop()


# -- Redis -------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def handler_redis(tmp_path_factory):
    """A private redis-server from the repo's redis.conf, one per test module (the config
    renames FLUSHDB/FLUSHALL/KEYS, so modules are isolated by server instead)."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    workdir = tmp_path_factory.mktemp("redis")
    port, password = _free_port(), secrets.token_hex(12)
    proc = subprocess.Popen(
        [binary, str(REPO / "redis" / "redis.conf"), "--port", str(port), "--dir",
         str(workdir), "--requirepass", password, "--daemonize", "no", "--appendonly", "no",
         "--save", "", "--bind", "127.0.0.1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.05)
    else:
        proc.kill()
        raise RuntimeError("redis-server did not start")
    yield {"port": port, "password": password}
    proc.terminate()
    proc.wait(10)


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


def waiting_jobs(queue: str) -> list[tuple[dict, int]]:
    """(payload, priority) of every waiting job of `queue`, in dequeue order."""
    from worker.queues import QueueKeys
    from worker.settings import get_settings

    settings = get_settings()
    conn = hueys.redis_client(settings)
    keys = QueueKeys(settings.redis_key_prefix, queue)
    huey = hueys.get_huey(queue, settings)
    out = []
    for job_id in conn.zrange(keys.waiting, 0, -1):
        msg, prio = conn.hmget(keys.job(job_id.decode()), "msg", "prio")
        out.append((huey.deserialize_task(msg).args[0], int(prio)))
    return out
