"""Admin configuration: every error names the variable and never echoes a secret."""

from __future__ import annotations

import pytest

from app.admin import create_app
from app.admin.config import AdminConfigError, load_admin_settings, reset_admin_settings_cache


@pytest.mark.parametrize("env, variable", [
    ({"ADMIN_API_KEYS": "ops:tiny9"}, "ADMIN_API_KEYS"),
    ({"ADMIN_API_KEYS": "no-colon-in-this-entry-at-all"}, "ADMIN_API_KEYS"),
    ({"READONLY_API_KEYS": "bad name!:readonly-key-0123456789"}, "READONLY_API_KEYS"),
    ({"ADMIN_API_KEYS": "a:admin-key-0123456789abcdef",
      "READONLY_API_KEYS": "a:other-key-0123456789abcdef"}, "names must be unique"),
])
def test_bad_keys_name_the_variable_not_the_key(admin_env, monkeypatch, env, variable):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    reset_admin_settings_cache()
    with pytest.raises(AdminConfigError) as info:
        create_app()
    assert variable in str(info.value)
    for secret in ("tiny9", "0123456789"):
        assert secret not in str(info.value)


@pytest.mark.parametrize("variable, value", [
    ("ADMIN_RATE_LIMIT", "lots"),
    ("ENQUEUE_MAX_PAYLOAD_BYTES", "-1"),
    ("GUNICORN_WORKERS", "0"),
    ("ADMIN_PROXY_HOPS", "many"),
])
def test_bad_values_name_the_variable(monkeypatch, variable, value):
    monkeypatch.setenv(variable, value)
    with pytest.raises(AdminConfigError) as info:
        load_admin_settings()
    assert variable in str(info.value)


def test_no_key_at_all_refuses_to_start(admin_env, monkeypatch):
    for name in ("ADMIN_API_KEYS", "READONLY_API_KEYS", "PRODUCER_API_KEYS", "ADMIN_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    reset_admin_settings_cache()
    with pytest.raises(AdminConfigError, match="no API key"):
        create_app()


def test_core_admin_api_key_is_the_admin_key_named_default(admin_env, monkeypatch):
    from worker.settings import reset_settings_cache

    monkeypatch.setenv("ADMIN_API_KEY", "single-admin-key-0123456789")
    reset_settings_cache()
    reset_admin_settings_cache()
    client = create_app().test_client()
    response = client.post("/api/admin/queue", json={"action": "pause", "queue": "sync"},
                           headers={"Authorization": "Bearer single-admin-key-0123456789"})
    assert response.status_code == 200


def test_admin_command_is_mounted_on_clarity():
    from click.testing import CliRunner

    from app.cli import main

    result = CliRunner().invoke(main, ["admin", "--help"])
    assert result.exit_code == 0 and "--port" in result.output
