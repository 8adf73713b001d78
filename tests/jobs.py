"""Tasks used by the test suite (loaded with TASK_MODULES=tests.jobs). Each records what it
did in Redis, under the test's own key prefix, so tests can count executions exactly."""

from __future__ import annotations

import os
import time

from huey.exceptions import CancelExecution

from worker.connections import redis_client
from worker.queues import QUEUE_NAMES
from worker.registry import task
from worker.settings import get_settings


def _key(name: str) -> str:
    return f"{get_settings().redis_key_prefix}:test:{name}"


def record(name: str, value) -> None:
    redis_client().rpush(_key(name), value)


@task(QUEUE_NAMES, name="record")
def record_task(payload: dict):
    """Appends payload['n'] to the 'done' list, after sleeping payload['sleep'] seconds."""
    redis_client().rpush(_key("started"), payload.get("n", ""))
    if payload.get("sleep"):
        time.sleep(float(payload["sleep"]))
    record("done", payload.get("n", ""))
    return payload.get("n")


@task(QUEUE_NAMES, name="flaky", retries=3, retry_delay=0.2, retry_max_delay=1.0)
def flaky(payload: dict):
    """Fails until it has been attempted payload['succeed_on'] times (0 = always fails)."""
    attempt = redis_client().incr(_key(f"attempts:{payload['n']}"))
    record("attempt_times", f"{payload['n']}:{time.time():.3f}")
    if payload.get("succeed_on") and attempt >= payload["succeed_on"]:
        record("done", payload["n"])
        return attempt
    if not payload.get("succeed_on") and redis_client().get(_key("heal")):
        record("done", payload["n"])
        return attempt
    raise RuntimeError(f"flaky failure {attempt} of job {payload['n']}")


@task(QUEUE_NAMES, name="permanent")
def permanent(payload: dict):
    """Gives up at once without retries."""
    raise CancelExecution(retry=False)


@task(QUEUE_NAMES, name="pid")
def pid_task(payload: dict):
    record("pids", os.getpid())


def redis_now() -> float:
    """Redis' clock: the one that decides when a job is due (hosts' clocks may be off)."""
    seconds, micros = redis_client().time()
    return seconds + micros / 1e6


@task(QUEUE_NAMES, name="stamp")
def stamp(payload: dict):
    """Records when it started by Redis' clock, to check that delayed jobs never run early."""
    record("stamps", f"{payload['n']}:{redis_now():.4f}")


@task(QUEUE_NAMES, name="login_link", sensitive=("token",))
def login_link(payload: dict):
    """A task whose payload carries a secret: `token` is never shown to people."""
    record("done", payload.get("n", ""))


@task(QUEUE_NAMES, name="sleepy", timeout=1.0, retries=1, retry_delay=0.2, retry_max_delay=0.2)
def sleepy(payload: dict):
    """Sleeps payload['sleep'] seconds: past its 1 s timeout unless told otherwise."""
    record("started", payload.get("n", ""))
    time.sleep(float(payload.get("sleep", 3)))
    record("done", payload.get("n", ""))
