"""Built-in tasks available on every queue: health probes and smoke tests."""

from worker.queues import QUEUE_NAMES
from worker.registry import task


@task(QUEUE_NAMES, name="ping")
def ping(payload: dict) -> dict:
    """Does nothing but answer; proves a queue's workers are consuming. Idempotent."""
    return {"pong": True, "echo": payload.get("echo")}
