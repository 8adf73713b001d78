"""Shared fixtures: a real redis-server, settings pointing at it, and real worker processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.pg import ENV_URL, PostgresCluster
from tests.redis_server import REPO, RedisServer
from worker import hueys
from worker.settings import reset_settings_cache

SECRET = "test-signing-secret-0123456789abcdef"


# Every process the suite starts inherits this marker in its environment (subprocesses copy
# os.environ), so the session's end can find any that outlived its test, wherever it was
# started and whoever its parent is now.
RUN_MARKER = "CLARITY_TEST_RUN"
os.environ[RUN_MARKER] = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"


def leftover_processes() -> list[tuple[int, str]]:
    """(pid, command line) of live processes carrying this run's marker, except us."""
    marker = f"{RUN_MARKER}={os.environ[RUN_MARKER]}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except OSError:
            continue  # gone meanwhile, or not ours to read
        if state != "Z":  # a zombie is already dead; its parent reaps it
            found.append((int(entry.name), cmdline))
    return found


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


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
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


def clarity_env(server: RedisServer, prefix: str, **extra) -> dict[str, str]:
    env = {**server.env, "JOB_SIGNING_SECRET": SECRET, "REDIS_KEY_PREFIX": prefix,
           "TASK_MODULES": "tests.jobs", "LOG_LEVEL": "INFO", "STATE_DIR": "/tmp/clarity-test"}
    env.update({k.upper(): str(v) for k, v in extra.items()})
    return env


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


class WorkerProcess:
    def __init__(self, env: dict, queues=("sync",), concurrency=4, extra_args=(), log=None):
        self.env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
        self.args = [sys.executable, "-m", "app", "worker", "--log-format", "text"]
        for q in queues:
            self.args += ["--queue", q]
        # Periodic tasks stay off unless a test asks: the real ones (stale-sync scan, cleanup)
        # would land in the queue under test whenever a run crosses their minute.
        if "--periodic" in extra_args:
            extra_args = [a for a in extra_args if a != "--periodic"]
        else:
            extra_args = ["--no-periodic", *extra_args]
        self.args += ["--concurrency", str(concurrency), *extra_args]
        self.log = log
        self.proc = None

    def start(self):
        out = open(self.log, "ab") if self.log else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(self.args, env=self.env, cwd=REPO, stdout=out,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def signal(self, sig):
        self.proc.send_signal(sig)

    def kill(self):
        """SIGKILL the whole process group: the worker and any forked children."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def wait(self, timeout=30):
        return self.proc.wait(timeout)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()


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


def wait_for(predicate, timeout=20.0, interval=0.02, message="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}")


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
