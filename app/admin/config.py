"""Settings of the admin app only (the queue core's live in `worker.settings`).

Read from the environment and the same `.env` file; a bad value raises `AdminConfigError`
whose message names the variable and never echoes a secret.

API keys come in four kinds:
  ADMIN_API_KEYS="ops:<key>,ci:<key>"       read and mutate (several, for rotation)
  READONLY_API_KEYS="grafana:<key>"         GET endpoints (payloads redacted), dashboard
                                            without buttons, /metrics
  PRODUCER_API_KEYS="webapp:<key>"          POST /api/jobs only
  METRICS_API_KEYS="prometheus:<key>"       /metrics (and workers' /metrics through nginx)
ADMIN_API_KEY (the core setting, one key) is also accepted, as the admin key named "default".
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from limits import parse_many
from pydantic import Field, SecretStr, field_validator

from worker.settings import ClarityBaseSettings, SettingsError, load

KEY_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
MIN_KEY_CHARS = 16
KINDS = ("admin", "readonly", "producer", "metrics")


class AdminConfigError(SettingsError):
    """An admin setting is missing or invalid; the message names the variable."""


@dataclass(frozen=True)
class ApiKey:
    name: str
    kind: str  # admin | readonly | producer
    secret: str

    def __repr__(self) -> str:  # never print the secret
        return f"ApiKey(name={self.name!r}, kind={self.kind!r})"


def parse_keys(raw: str, kind: str, variable: str) -> list[ApiKey]:
    """'name:key,name2:key2' -> [ApiKey]. Errors name the variable and entry, not the key."""
    keys = []
    for index, entry in enumerate(e.strip() for e in raw.split(",")):
        if not entry:
            continue
        name, sep, secret = entry.partition(":")
        name, secret = name.strip(), secret.strip()
        if not sep or not KEY_NAME.match(name):
            raise ValueError(f"{variable}: entry {index + 1} must look like name:key "
                             "(name of letters, digits, _ . -)")
        if len(secret) < MIN_KEY_CHARS:
            raise ValueError(f"{variable}: the key named {name!r} is shorter than "
                             f"{MIN_KEY_CHARS} characters")
        keys.append(ApiKey(name, kind, secret))
    return keys


def _rate(value: str, variable: str) -> str:
    try:
        parse_many(value)
    except ValueError:
        raise ValueError(f"{variable}: not a rate limit like '100 per 15 minutes' or "
                         "'10/second'") from None
    return value


class AdminSettings(ClarityBaseSettings):

    admin_api_keys: SecretStr = SecretStr("")
    readonly_api_keys: SecretStr = SecretStr("")
    producer_api_keys: SecretStr = SecretStr("")
    metrics_api_keys: SecretStr = SecretStr("")

    # Rate limits per client (API key name when one is presented, else the client address),
    # shared by every gunicorn worker and host through Redis.
    admin_rate_limit: str = "100 per 15 minutes"
    enqueue_rate_limit: str = "100 per 15 minutes"
    dashboard_rate_limit: str = "600 per 15 minutes"
    webhook_rate_limit: str = "600 per minute"
    rate_limit_enabled: bool = True

    # Request and payload sizes.
    enqueue_max_payload_bytes: int = Field(default=64 * 1024, ge=256, le=16 * 1024 * 1024)
    webhook_max_body_bytes: int = Field(default=256 * 1024, ge=1024, le=16 * 1024 * 1024)
    admin_max_body_bytes: int = Field(default=1024 * 1024, ge=1024, le=64 * 1024 * 1024)

    # Dashboard session.
    admin_session_secret: SecretStr | None = None  # default: derived from JOB_SIGNING_SECRET
    admin_session_hours: float = Field(default=8.0, gt=0, le=24 * 30)
    dashboard_refresh_seconds: float = Field(default=5.0, ge=1, le=3600)

    # Behind nginx: exactly one proxy hop sets X-Forwarded-For/-Proto/-Host.
    admin_proxy_hops: int = Field(default=1, ge=0, le=5)
    # The overview is cached this long per process (0 = off): a dashboard wall of browsers
    # and a scraper then cost Redis one pipeline per interval, not one per request.
    overview_cache_seconds: float = Field(default=0.5, ge=0, le=60)

    # gunicorn (read by gunicorn.conf.py).
    gunicorn_bind: str = "unix:/run/clarity-admin/gunicorn.sock"
    gunicorn_workers: int = Field(default=2, ge=1, le=64)
    gunicorn_threads: int = Field(default=4, ge=1, le=64)
    gunicorn_timeout: int = Field(default=30, ge=1, le=3600)
    # Recycle a worker after this many requests (0 = never); jittered by 10 %. Each restart
    # stalls the requests queued on that worker for the app start (about a second).
    gunicorn_max_requests: int = Field(default=50_000, ge=0)

    @field_validator("admin_rate_limit", "enqueue_rate_limit", "dashboard_rate_limit",
                     "webhook_rate_limit")
    @classmethod
    def _rates(cls, value: str, info) -> str:
        return _rate(value, info.field_name.upper())

    def keys(self, core_admin_key: SecretStr | None = None) -> list[ApiKey]:
        keys = parse_keys(self.admin_api_keys.get_secret_value(), "admin", "ADMIN_API_KEYS")
        keys += parse_keys(self.readonly_api_keys.get_secret_value(), "readonly",
                           "READONLY_API_KEYS")
        keys += parse_keys(self.producer_api_keys.get_secret_value(), "producer",
                           "PRODUCER_API_KEYS")
        keys += parse_keys(self.metrics_api_keys.get_secret_value(), "metrics",
                           "METRICS_API_KEYS")
        if core_admin_key is not None and core_admin_key.get_secret_value():
            secret = core_admin_key.get_secret_value()
            if len(secret) < MIN_KEY_CHARS:
                raise ValueError(f"ADMIN_API_KEY: shorter than {MIN_KEY_CHARS} characters")
            keys.append(ApiKey("default", "admin", secret))
        seen: set[str] = set()
        for key in keys:
            if key.name in seen:
                raise ValueError(f"API key name {key.name!r} is used twice (names must be "
                                 "unique across ADMIN_API_KEYS, READONLY_API_KEYS, "
                                 "PRODUCER_API_KEYS, METRICS_API_KEYS and ADMIN_API_KEY)")
            seen.add(key.name)
        secrets = [k.secret for k in keys]
        if len(set(secrets)) != len(secrets):
            raise ValueError("the same API key is configured under two names")
        return keys


def load_admin_settings(**overrides) -> AdminSettings:
    return load(AdminSettings, "admin configuration", AdminConfigError, **overrides)


@lru_cache(maxsize=1)
def get_admin_settings() -> AdminSettings:
    return load_admin_settings()


def reset_admin_settings_cache() -> None:
    get_admin_settings.cache_clear()
