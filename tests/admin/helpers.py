"""Keys of every kind and jobs made through the real storage, for the admin tests."""

from __future__ import annotations

from worker.management import QueueManager
from worker.producer import enqueue
from worker.storage import Settlement

ADMIN_KEY = "admin-key-0123456789abcdef"
ROTATED_KEY = "admin-key-rotated-fedcba9876"
READONLY_KEY = "readonly-key-0123456789abcdef"
PRODUCER_KEY = "producer-key-0123456789abcdef"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
READONLY = {"Authorization": f"Bearer {READONLY_KEY}"}
PRODUCER = {"Authorization": f"Bearer {PRODUCER_KEY}"}
KEY_SETTINGS = {
    "admin_api_keys": f"ops:{ADMIN_KEY},ops-next:{ROTATED_KEY}",
    "readonly_api_keys": f"grafana:{READONLY_KEY}",
    "producer_api_keys": f"webapp:{PRODUCER_KEY}",
}


def make_jobs(queue="sync", n=1, task_name="record", **kwargs) -> list[str]:
    return [enqueue(queue, task_name, {"n": i}, **kwargs).id for i in range(n)]


def make_failed(manager: QueueManager, queue="sync", n=1, error="boom") -> list[str]:
    """Enqueue `n` jobs and fail them through the real storage (lease, then settle)."""
    make_jobs(queue, n)
    storage = manager.storage(queue)
    ids = []
    for _ in range(n):
        lease = storage.lease(block=False)
        assert lease is not None and lease is not True
        storage.settle([Settlement("fail", lease, reason="error", error_type="RuntimeError",
                                   error=error, traceback="Traceback (most recent call last):\n"
                                   f"  File \"jobs.py\", line 1\nRuntimeError: {error}",
                                   attempts=1)])
        ids.append(lease.id)
    return ids
