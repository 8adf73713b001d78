"""Fixtures of the admin tests: the app on the session's real Redis, keys of every kind,
failed jobs made through the real storage, and helpers for the nginx/gunicorn e2e tests."""

from __future__ import annotations

import pytest

from app.admin import create_app
from app.admin.config import reset_admin_settings_cache
from worker.management import QueueManager
from worker.producer import enqueue
from worker.registry import _SPECS, task
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

# The webhook handler belongs to another issue; where it is not installed the intake still
# needs a task to enqueue, so the tests declare a stand-in (never over the real one).
try:
    import worker.tasks.webhook  # noqa: F401 - declares process_webhook
except ImportError:
    pass
if ("webhook", "process_webhook") not in _SPECS:
    @task("webhook", name="process_webhook")
    def process_webhook(payload: dict):  # pragma: no cover - stand-in
        return payload.get("provider")


@pytest.fixture
def admin_env(configure, redis_server, monkeypatch):
    """Settings on the session Redis with a fresh prefix and every kind of key."""
    configure(redis_server, **KEY_SETTINGS)
    monkeypatch.setenv("ADMIN_PROXY_HOPS", "1")
    reset_admin_settings_cache()
    yield redis_server
    reset_admin_settings_cache()


@pytest.fixture
def app(admin_env):
    return create_app({"TESTING": True})


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def manager(admin_env):
    return QueueManager()


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


@pytest.fixture(scope="session")
def open_stack(redis_server, tmp_path_factory):
    """nginx → gunicorn → app with limits raised out of the way (schemathesis, browser)."""
    from tests.admin.stack import Stack, have_e2e_tools
    from tests.conftest import clarity_env

    missing = have_e2e_tools()
    if missing:
        pytest.skip(f"needs {missing} (apt-get install nginx openssl)")
    env = clarity_env(redis_server, "open", **KEY_SETTINGS,
                      admin_rate_limit="100000 per minute", enqueue_rate_limit="100000 per minute",
                      dashboard_rate_limit="100000 per minute",
                      dashboard_refresh_seconds="2")
    stack = Stack(tmp_path_factory.mktemp("open-stack"), env,
                  nginx_vars={"nginx_admin_rate": "10000r/s", "nginx_admin_burst": 10000})
    stack.start()
    yield stack
    stack.stop()
