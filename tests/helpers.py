"""What tests share besides fixtures: the suite's secret and process marker, settings for
a worker, a real worker process, waiting for a condition, and the test tasks' records."""

from __future__ import annotations

import os
import signal
import sys
import time
import uuid
from pathlib import Path

import redis

from app.devstack import REPO
from app.devstack.processes import Child
from worker.connections import redis_client
from worker.settings import get_settings

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


def clarity_env(server, prefix: str, **extra) -> dict[str, str]:
    env = {**server.env, "JOB_SIGNING_SECRET": SECRET, "REDIS_KEY_PREFIX": prefix,
           "TASK_MODULES": "tests.jobs", "LOG_LEVEL": "INFO", "STATE_DIR": "/tmp/clarity-test"}
    env.update({k.upper(): str(v) for k, v in extra.items()})
    return env


class WorkerProcess:
    """A real `clarity worker` process in its own session, so that kill() also takes the
    job processes it forks (--processes)."""

    def __init__(self, env: dict, queues=("sync",), concurrency=4, extra_args=(), log=None):
        args = [sys.executable, "-m", "app", "worker", "--log-format", "text"]
        for q in queues:
            args += ["--queue", q]
        # Periodic tasks stay off unless a test asks: the real ones (stale-sync scan, cleanup)
        # would land in the queue under test whenever a run crosses their minute.
        if "--periodic" in extra_args:
            extra_args = [a for a in extra_args if a != "--periodic"]
        else:
            extra_args = ["--no-periodic", *extra_args]
        args += ["--concurrency", str(concurrency), *extra_args]
        self.child = Child("worker", args, log, {**os.environ, **env, "PYTHONUNBUFFERED": "1"},
                           cwd=REPO)

    @property
    def proc(self):
        return self.child.proc

    def start(self):
        self.child.start()
        return self

    def signal(self, sig):
        self.child.send_signal(sig)

    def kill(self):
        """SIGKILL the whole process group: the worker and any forked children."""
        self.child.signal_group(signal.SIGKILL)
        self.child.wait(10)

    def wait(self, timeout=30):
        return self.proc.wait(timeout)

    def stop(self):
        """Graceful (SIGINT), then SIGKILL to the group after 15 s."""
        self.child.stop(signal.SIGINT, timeout=15, group=False)


def wait_for(predicate, timeout=20.0, interval=0.02, message="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}")


def test_key(name: str) -> str:
    return f"{get_settings().redis_key_prefix}:test:{name}"


def recorded(name: str) -> list[str]:
    return [v.decode() for v in redis_client().lrange(test_key(name), 0, -1)]


def recorded_safe() -> list[str]:
    """The jobs run so far, or none while Redis cannot say (failing over)."""
    try:
        return recorded("done")
    except redis.RedisError:
        return []
