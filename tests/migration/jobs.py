"""A test task whose executions are counted outside Redis (a file per test), so that a
Redis killed mid-test cannot hide or invent an execution. Load with
TASK_MODULES=tests.jobs,tests.migration.jobs and set CLARITY_TEST_COUNT_FILE."""

from __future__ import annotations

import os

from worker.queues import QUEUE_NAMES
from worker.registry import task


@task(QUEUE_NAMES, name="count")
def count(payload: dict):
    """Appends payload['n'] and where it ran to $CLARITY_TEST_COUNT_FILE (one write)."""
    line = f"{payload['n']} {os.environ.get('CLARITY_TEST_RUNNER', 'queue')}\n".encode()
    fd = os.open(os.environ["CLARITY_TEST_COUNT_FILE"], os.O_WRONLY | os.O_APPEND | os.O_CREAT,
                 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)
    return payload["n"]


def executions(path) -> list[tuple[str, str]]:
    try:
        with open(path) as f:
            return [tuple(line.split()) for line in f if line.strip()]
    except FileNotFoundError:
        return []


@task(QUEUE_NAMES, name="boom", retries=1, retry_delay=0.01)
def boom(payload: dict):
    """Always fails (once retried)."""
    raise RuntimeError(f"boom {payload.get('n')}")
