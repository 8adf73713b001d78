import pytest

from worker.settings import SettingsError, load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    monkeypatch.setenv("CLARITY_ENV_FILE", "/nonexistent.env")
    for var in ("REDIS_URL", "REDIS_PORT", "REDIS_PASSWORD", "JOB_SIGNING_SECRET",
                "WORKER_QUEUES", "LOG_LEVEL", "WORKER_CONCURRENCY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("JOB_SIGNING_SECRET", "s" * 32)


def test_missing_signing_secret_names_the_variable(monkeypatch):
    monkeypatch.delenv("JOB_SIGNING_SECRET")
    with pytest.raises(SettingsError, match="JOB_SIGNING_SECRET: is required"):
        load_settings()


def test_bad_port_names_the_variable_and_expected_form(monkeypatch):
    monkeypatch.setenv("REDIS_PORT", "seventy")
    with pytest.raises(SettingsError, match="REDIS_PORT: .*integer"):
        load_settings()


def test_unknown_queue_in_worker_queues(monkeypatch):
    monkeypatch.setenv("WORKER_QUEUES", "sync,payments")
    with pytest.raises(SettingsError, match="WORKER_QUEUES: .*unknown: payments"):
        load_settings()


def test_short_secret_is_refused_without_echoing_it(monkeypatch):
    monkeypatch.setenv("JOB_SIGNING_SECRET", "hunter2")
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert "JOB_SIGNING_SECRET" in str(info.value)
    assert "hunter2" not in str(info.value)


def test_bad_redis_url_does_not_leak_password(monkeypatch):
    monkeypatch.setenv("REDIS_URL", "http://:topsecretpw@host:6379/0")
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert "REDIS_URL" in str(info.value)
    assert "topsecretpw" not in str(info.value)


def test_secrets_never_in_repr_or_display(monkeypatch):
    monkeypatch.setenv("REDIS_PASSWORD", "pw-very-secret")
    monkeypatch.setenv("REDIS_URL", "redis://:url-secret@10.0.0.5:6379/0")
    settings = load_settings()
    text = repr(settings) + str(settings) + settings.redis_display()
    for secret in ("pw-very-secret", "url-secret", "s" * 32):
        assert secret not in text
    assert settings.redis_display() == "redis://***@10.0.0.5:6379/0"


def test_log_level_must_be_known(monkeypatch):
    monkeypatch.setenv("LOG_LEVEL", "LOUD")
    with pytest.raises(SettingsError, match="LOG_LEVEL"):
        load_settings()
