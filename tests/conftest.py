"""Shared fixtures: a real redis-server, settings pointing at it, and real worker processes.
Helpers that tests import live in tests/helpers.py, never here."""

from __future__ import annotations

import os
import signal
import sys
import time
import uuid
from pathlib import Path

import pytest

from app.devstack import REPO, redis_acl
from app.devstack.postgres import ENV_URL, PostgresCluster
from app.devstack.redis_server import RedisServer
from tests.helpers import WorkerProcess, clarity_env, leftover_processes
from worker import hueys
from worker.settings import reset_settings_cache


def pytest_sessionfinish(session, exitstatus):
    """Fail the run if a process the suite started is still alive after every teardown."""
    deadline = time.monotonic() + 10
    while (left := leftover_processes()) and time.monotonic() < deadline:
        time.sleep(0.2)  # a process stopped at teardown may still be exiting
    if not left:
        return
    lines = "\n".join(f"  pid {pid}: {cmd[:200]}" for pid, cmd in left)
    sys.stderr.write(f"\nERROR: {len(left)} process(es) started by the tests outlived them "
                     f"(now killed):\n{lines}\n")
    for pid, _ in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_addoption(parser):
    parser.addoption(
        "--redis-user", default=os.environ.get("CLARITY_TEST_REDIS_USER", ""),
        help="start the session's Redis with the ACL users of redis/users.acl.j2 (the "
             "`default` user off) and connect every test as this user, e.g. clarity-worker "
             "(env CLARITY_TEST_REDIS_USER)")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory, pytestconfig):
    user = pytestconfig.getoption("--redis-user")
    if user:
        # The tests' key prefixes are t<random>: the rules are rendered for the glob `t*`.
        server = RedisServer(tmp_path_factory.mktemp("redis"), acl=redis_acl.test_passwords(),
                             acl_prefix="t*", username=user).start()
    else:
        server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def redis_factory(tmp_path):
    """redis_factory(name, extra=(), start=True): a private redis-server for one test (to
    kill, restart or misconfigure); stopped at teardown even when the test fails."""
    servers = []

    def make(name="redis", extra=(), start=True):
        server = RedisServer(tmp_path / name, extra=tuple(extra))
        servers.append(server)
        return server.start() if start else server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def prefix():
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def configure(monkeypatch, prefix):
    """configure(server, **settings): point this process's settings at `server`."""

    def apply(server: RedisServer, **extra):
        for key, value in clarity_env(server, prefix, **extra).items():
            monkeypatch.setenv(key, value)
        monkeypatch.setenv("CLARITY_ENV_FILE", "/nonexistent.env")
        reset_settings_cache()
        hueys.reset_caches()
        return server

    yield apply
    reset_settings_cache()
    hueys.reset_caches()


@pytest.fixture
def env(configure, redis_server):
    """Settings pointing at the session's Redis, with a fresh key prefix per test."""
    return configure(redis_server)


@pytest.fixture
def workers(tmp_path, prefix, redis_server):
    """workers(server=None, **kw) starts a real `clarity worker` process; all are stopped."""
    started = []

    def start(server=None, queues=("sync",), concurrency=4, extra_args=(), **settings):
        server = server or redis_server
        log = tmp_path / f"worker-{len(started)}.log"
        w = WorkerProcess(clarity_env(server, prefix, **settings), queues, concurrency,
                          extra_args, log).start()
        started.append(w)
        return w

    yield start
    for w in started:
        w.stop()


@pytest.fixture
def artifacts():
    path = Path(REPO) / "tests" / "artifacts"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def postgres_server_url(tmp_path_factory):
    url = os.environ.get(ENV_URL)
    if url:
        yield url
        return
    if os.environ.get("CLARITY_TEST_SKIP_POSTGRES"):
        pytest.skip("CLARITY_TEST_SKIP_POSTGRES is set")
    # Not under pytest's tmp dir: its parents are 0700 root, which the postgres user
    # cannot traverse.
    cluster = PostgresCluster()
    cluster.start()
    yield cluster.url
    cluster.stop()
