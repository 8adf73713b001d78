"""Settings of the job handlers: the app database, SMTP, the aggregator, webhooks, retention.

Kept apart from `worker.settings` (the queue core's) so that a process that only enqueues
needs none of these. Same rules: read from the environment and the `.env` file, secrets
are `SecretStr` (never printed), and a bad value raises `SettingsError` naming the
variable. Every default works on a developer's machine (SQLite in the state directory,
an SMTP server on localhost).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator

from worker.settings import ClarityBaseSettings, load


class HandlerSettings(ClarityBaseSettings):

    state_dir: Path = Path(".state")

    # App database. Unset: SQLite file `clarity.db` in STATE_DIR. PostgreSQL in production:
    # postgresql+psycopg://user:password@host:5432/clarity
    database_url: SecretStr | None = None
    database_pool_size: int = Field(default=5, ge=1, le=100)
    database_echo: bool = False

    # SMTP.
    smtp_host: str = "localhost"
    smtp_port: int = Field(default=587, ge=1, le=65535)
    smtp_user: str | None = None
    smtp_password: SecretStr | None = None
    smtp_security: Literal["starttls", "tls", "none"] = "starttls"
    smtp_from: str = "Income Clarity <no-reply@localhost>"
    smtp_timeout: float = Field(default=30.0, gt=0)
    app_base_url: str = "http://localhost:8000"

    # Aggregator (Yodlee-style REST API).
    aggregator_base_url: str = "http://127.0.0.1:8900"
    aggregator_client_id: str = "clarity-local"
    aggregator_client_secret: SecretStr = SecretStr("clarity-local-secret")
    aggregator_timeout: float = Field(default=30.0, gt=0)
    aggregator_page_size: int = Field(default=500, ge=1, le=10_000)
    aggregator_max_attempts: int = Field(default=4, ge=1, le=20)
    # A Retry-After longer than this is not slept through in the worker: the job is retried
    # later by the queue instead.
    aggregator_max_retry_after: float = Field(default=30.0, ge=0)
    sync_transactions_days: int = Field(default=90, ge=1)
    sync_initial_transactions_days: int = Field(default=730, ge=1)

    # Scheduled syncs.
    sync_max_age_hours: float = Field(default=24.0, gt=0)
    sync_stale_batch_size: int = Field(default=500, ge=1, le=100_000)
    sync_webhook_window_seconds: int = Field(default=300, ge=1)

    # Webhooks: WEBHOOK_SECRETS="yodlee=secret1,other=secret2" (one or more providers; a
    # provider may list several secrets separated by '|' while rotating).
    webhook_secrets: SecretStr | None = None
    webhook_tolerance_seconds: int = Field(default=300, ge=1, le=86_400)

    # Notifications.
    notification_window_seconds: int = Field(default=3600, ge=1)

    # Cleanup.
    sync_log_retention_days: int = Field(default=90, ge=1)
    email_log_retention_days: int = Field(default=90, ge=1)
    webhook_retention_days: int = Field(default=30, ge=1)
    side_effect_retention_days: int = Field(default=30, ge=8)  # > the queue's 7-day dedupe
    legacy_retention_days: int = Field(default=7, ge=1)
    notification_retention_days: int = Field(default=180, ge=1)
    temp_dir: Path | None = None
    temp_max_age_days: int = Field(default=7, ge=1)
    cleanup_batch_size: int = Field(default=5000, ge=1)

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and value.get_secret_value():
            url = value.get_secret_value()
            if not url.startswith(("sqlite", "postgresql")):
                raise ValueError("must start with sqlite:// or postgresql+psycopg://")
            if url.startswith(("postgresql://", "postgres://")):
                # Plain postgresql:// would pick psycopg2, which we do not ship.
                url = "postgresql+psycopg://" + url.split("://", 1)[1]
                return SecretStr(url)
        return value or None

    @field_validator("webhook_secrets")
    @classmethod
    def _webhook_secrets(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        for item in value.get_secret_value().split(","):
            provider, sep, secret = item.strip().partition("=")
            if not sep or not provider.strip() or not secret.strip():
                raise ValueError("must be provider=secret[,provider=secret...]")
            if any(len(s) < 16 for s in secret.split("|")):
                raise ValueError(f"the secret of provider {provider.strip()!r} must be at "
                                 "least 16 characters")
        return value

    def database_connection_url(self) -> str:
        """The URL SQLAlchemy connects with; may hold a password, so never log it."""
        if self.database_url is not None:
            return self.database_url.get_secret_value()
        return f"sqlite:///{(self.state_dir / 'clarity.db').as_posix()}"

    def database_display(self) -> str:
        from sqlalchemy.engine import make_url

        return make_url(self.database_connection_url()).render_as_string(hide_password=True)

    def webhook_secrets_for(self, provider: str) -> list[str]:
        if self.webhook_secrets is None:
            return []
        for item in self.webhook_secrets.get_secret_value().split(","):
            name, _, secret = item.strip().partition("=")
            if name.strip() == provider:
                return [s.strip() for s in secret.split("|") if s.strip()]
        return []


def load_handler_settings(**overrides) -> HandlerSettings:
    return load(HandlerSettings, "handler configuration", **overrides)


@lru_cache(maxsize=1)
def get_handler_settings() -> HandlerSettings:
    return load_handler_settings()


def reset_handler_settings_cache() -> None:
    get_handler_settings.cache_clear()
