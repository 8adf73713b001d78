"""Fixtures of the admin tests: the app on the session's real Redis, keys of every kind,
and the nginx → gunicorn stack for schemathesis and the browser (helpers: tests/admin/helpers.py)."""

from __future__ import annotations

import pytest

from app.admin import create_app
from app.admin.config import reset_admin_settings_cache
from tests.admin.helpers import KEY_SETTINGS
from tests.helpers import clarity_env
from worker.management import QueueManager


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


@pytest.fixture(scope="session")
def open_stack(redis_server, tmp_path_factory):
    """nginx → gunicorn → app with limits raised out of the way (schemathesis, browser)."""
    from app.devstack.web import WebStack, have_e2e_tools

    missing = have_e2e_tools()
    if missing:
        pytest.skip(f"needs {missing} (apt-get install nginx openssl)")
    env = clarity_env(redis_server, "open", **KEY_SETTINGS,
                      admin_rate_limit="100000 per minute", enqueue_rate_limit="100000 per minute",
                      dashboard_rate_limit="100000 per minute",
                      dashboard_refresh_seconds="2")
    stack = WebStack(tmp_path_factory.mktemp("open-stack"), env,
                     nginx_vars={"nginx_admin_rate": "10000r/s", "nginx_admin_burst": 10000})
    stack.start()
    yield stack
    stack.stop()
