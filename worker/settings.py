"""One typed settings object, read from the environment and an optional `.env` file.

Every process (worker, admin app, CLI, producer) calls `get_settings()`; a bad or
missing value raises `SettingsError`, whose message names the variable and the
expected form and never echoes a secret's value.
"""

from __future__ import annotations

import hashlib
import os
import socket
import ssl
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from worker.queues import QUEUE_NAMES


class SettingsError(Exception):
    """A configuration value is missing or invalid; the message names the variable."""


class ClarityBaseSettings(BaseSettings):
    """The rules every settings class of the project follows: environment variables (any
    case) over the `.env` file (`CLARITY_ENV_FILE` names another); unknown variables ignored;
    secrets are `SecretStr`, so reprs show `**********`; errors never echo input values."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
        hide_input_in_errors=True,
    )


class Settings(ClarityBaseSettings):
    """The queue core's settings: Redis, signing, the worker runtime, logging."""

    # Redis: either REDIS_URL, or the parts.
    redis_url: SecretStr | None = Field(default=None,
                                        description="redis://[user:password@]host:port/db")
    redis_host: str = "127.0.0.1"
    redis_port: int = Field(default=6379, ge=1, le=65535)
    # The Redis ACL user (redis/users.acl.j2: clarity-worker, clarity-admin, clarity-producer,
    # ...) and its password; no user: the `default` user (requirepass).
    redis_username: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]+$")
    redis_password: SecretStr | None = None
    redis_db: int = Field(default=0, ge=0, le=15)
    redis_socket_timeout: float = Field(default=5.0, gt=0)
    redis_key_prefix: str = Field(default="clarity", pattern=r"^[A-Za-z0-9_.-]+$")
    # Redis Sentinel (instead of one host): REDIS_SENTINELS=host:port,host:port and the name
    # the sentinels monitor; or REDIS_URL=redis+sentinel://[user:password@]host:port,.../name/db
    # (user and password are Redis'; the sentinels have their own: REDIS_SENTINEL_PASSWORD).
    redis_sentinels: str = ""
    redis_sentinel_master: str = Field(default="clarity", pattern=r"^[A-Za-z0-9_.-]+$")
    redis_sentinel_password: SecretStr | None = None  # when the sentinels require one
    # An enqueue is acknowledged once this many replicas have it (WAIT); default: 1 with
    # Sentinel, 0 without. 0 turns it off.
    redis_wait_replicas: int | None = Field(default=None, ge=0, le=16)
    redis_wait_timeout_ms: int = Field(default=1000, ge=10, le=60_000)
    # TLS to Redis (and, with Sentinel, to the sentinels and the primary they name alike):
    # REDIS_TLS=true, or a rediss:// REDIS_URL. The CA bundle that verifies the servers
    # (none: the system's store); a client certificate and key for `tls-auth-clients yes`.
    redis_tls: bool = False
    redis_tls_ca_file: Path | None = None
    redis_tls_cert_file: Path | None = None
    redis_tls_key_file: Path | None = None
    # Servers' certificates name their host's DNS name and addresses (Sentinel hands out IPs).
    redis_tls_check_hostname: bool = True

    # Message signing (HMAC-SHA256). Shared by producers and workers.
    signing_secret: SecretStr = Field(alias="JOB_SIGNING_SECRET")
    # Verify-only secrets while rotating (comma-separated): jobs signed with any of them
    # still run; new ones are signed with JOB_SIGNING_SECRET.
    signing_previous_secrets: SecretStr | None = Field(
        default=None, alias="JOB_SIGNING_PREVIOUS_SECRETS")

    # Worker runtime.
    worker_concurrency: int = Field(default=4, ge=1, le=256)
    worker_queues: str = Field(default=",".join(QUEUE_NAMES))
    worker_name: str = Field(default_factory=lambda: socket.gethostname())
    worker_processes: bool = False
    health_check_port: int = Field(default=0, ge=0, le=65535)
    lease_seconds: float = Field(default=30.0, ge=0.5, le=3600)
    max_deliveries: int = Field(default=5, ge=1, le=100)
    shutdown_timeout: float = Field(default=60.0, ge=0)
    # The failed set, per queue: pruned by the hourly cleanup (QueueManager.prune_failed).
    failed_retention_days: float = Field(default=30.0, gt=0, le=3650)
    failed_max_jobs: int = Field(default=100_000, ge=1)
    task_modules: str = ""

    # Admin API.
    admin_api_key: SecretStr | None = None
    # The audit list of operators' actions (admin and CLI), in Redis: at most this many
    # entries and this many bytes (entries are cut to 1 KiB each; see worker/audit.py).
    audit_max_entries: int = Field(default=10_000, ge=100, le=1_000_000)
    audit_max_bytes: int = Field(default=16 * 1024 * 1024, ge=64 * 1024, le=1024 * 1024 * 1024)

    # Logging.
    log_level: str = Field(default="INFO")
    state_dir: Path = Path(".state")

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, value: str) -> str:
        value = value.upper()
        if value not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
        return value

    @field_validator("redis_tls_ca_file", "redis_tls_cert_file", "redis_tls_key_file",
                     mode="before")
    @classmethod
    def _empty_path(cls, value):
        # An empty variable (a template that renders nothing) means "not set".
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("redis_tls_ca_file", "redis_tls_cert_file", "redis_tls_key_file")
    @classmethod
    def _readable(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is None:
            return None
        try:
            value.read_bytes()
        except OSError as exc:  # the path is no secret; the contents never appear
            raise ValueError(f"cannot read {value}: {exc.strerror or exc}") from None
        if info.field_name == "redis_tls_ca_file":
            try:  # as redis-py will load it: a bad bundle stops startup, not a connection
                ssl.create_default_context().load_verify_locations(cafile=value)
            except ssl.SSLError as exc:
                raise ValueError(f"{value} is not a PEM CA bundle ({exc.reason or exc})") \
                    from None
        return value

    @field_validator("worker_queues")
    @classmethod
    def _queues(cls, value: str) -> str:
        names = [q.strip() for q in value.split(",") if q.strip()]
        unknown = [q for q in names if q not in QUEUE_NAMES]
        if not names or unknown:
            raise ValueError(
                f"must be a comma-separated list of {', '.join(QUEUE_NAMES)}"
                + (f" (unknown: {', '.join(unknown)})" if unknown else ""))
        return ",".join(names)

    @field_validator("signing_secret")
    @classmethod
    def _secret_strength(cls, value: SecretStr) -> SecretStr:
        if len(value.get_secret_value()) < 16:
            raise ValueError("must be at least 16 characters (generate one with "
                             "`python3 -c 'import secrets; print(secrets.token_hex(32))'`)")
        return value

    @field_validator("signing_previous_secrets")
    @classmethod
    def _previous_secrets(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        if any(len(s.strip()) < 16 for s in value.get_secret_value().split(",")):
            raise ValueError("each secret must be at least 16 characters (comma-separated)")
        return value

    @property
    def previous_signing_secrets(self) -> tuple[str, ...]:
        if self.signing_previous_secrets is None:
            return ()
        return tuple(s.strip() for s in self.signing_previous_secrets.get_secret_value()
                     .split(",") if s.strip())

    @model_validator(mode="after")
    def _redis_url_form(self) -> Settings:
        if self.redis_url is not None:
            url = self.redis_url.get_secret_value()
            if not url.startswith(("redis://", "rediss://", "unix://", "redis+sentinel://")):
                raise ValueError("REDIS_URL must start with redis://, rediss://, unix:// or "
                                 "redis+sentinel://")
        target = self.redis_target()  # raises ValueError naming what is wrong
        if self.redis_username and target.password is None:
            raise ValueError("REDIS_USERNAME is set but no password is (REDIS_PASSWORD, or "
                             "in REDIS_URL): an ACL user needs its password")
        if self.redis_username and target.username != self.redis_username:
            raise ValueError("REDIS_USERNAME differs from the user in REDIS_URL (or REDIS_URL "
                             "names none): give the user in REDIS_URL only")
        if target.sentinels and self.redis_url is not None and not url.startswith(
                "redis+sentinel://"):
            raise ValueError("give either REDIS_URL or REDIS_SENTINELS, not both")
        self._check_tls()
        return self

    @property
    def tls(self) -> bool:
        """Whether Redis (and the sentinels) are reached over TLS."""
        url = self.redis_url.get_secret_value() if self.redis_url is not None else ""
        return self.redis_tls or url.startswith("rediss://")

    def _check_tls(self) -> None:
        files = {"REDIS_TLS_CA_FILE": self.redis_tls_ca_file,
                 "REDIS_TLS_CERT_FILE": self.redis_tls_cert_file,
                 "REDIS_TLS_KEY_FILE": self.redis_tls_key_file}
        url = self.redis_url.get_secret_value() if self.redis_url is not None else ""
        if not self.tls:
            for name, path in files.items():
                if path is not None:
                    raise ValueError(f"{name} is set but TLS is off: use rediss:// or "
                                     "REDIS_TLS=true")
            return
        if url.startswith("unix://"):
            raise ValueError("REDIS_TLS is on but REDIS_URL is a unix:// socket, which has "
                             "no TLS: use rediss://host:port/db")
        if url.startswith("redis://"):
            raise ValueError("REDIS_TLS is on but REDIS_URL says redis:// (plain TCP): "
                             "use rediss://")
        if (self.redis_tls_cert_file is None) != (self.redis_tls_key_file is None):
            given, missing = (("REDIS_TLS_CERT_FILE", "REDIS_TLS_KEY_FILE")
                              if self.redis_tls_key_file is None
                              else ("REDIS_TLS_KEY_FILE", "REDIS_TLS_CERT_FILE"))
            raise ValueError(f"{given} is set but {missing} is not: a client certificate "
                             "needs its key (give both, or neither)")
        if self.redis_tls_cert_file is not None:
            try:  # as redis-py will load them
                ssl.create_default_context().load_cert_chain(self.redis_tls_cert_file,
                                                             self.redis_tls_key_file)
            except ssl.SSLError as exc:
                raise ValueError(
                    f"REDIS_TLS_CERT_FILE / REDIS_TLS_KEY_FILE: {self.redis_tls_cert_file} "
                    f"and {self.redis_tls_key_file} are not a PEM certificate and its "
                    f"unencrypted key ({exc.reason or exc})") from None

    def redis_tls_kwargs(self) -> dict:
        """redis-py's ssl_* connection arguments ({} without TLS); `ssl=True` is the
        caller's business (a rediss:// URL says it already)."""
        if not self.tls:
            return {}
        ca, cert, key = (str(p) if p is not None else None for p in (
            self.redis_tls_ca_file, self.redis_tls_cert_file, self.redis_tls_key_file))
        return {"ssl_ca_certs": ca, "ssl_certfile": cert, "ssl_keyfile": key,
                "ssl_check_hostname": self.redis_tls_check_hostname}

    def model_copy(self, *, update=None, deep=False):
        """A copy whose huey_key is worked out again: `update` may change a part of it."""
        copy = super().model_copy(update=update, deep=deep)
        copy.__dict__.pop("huey_key", None)
        return copy

    @cached_property
    def huey_key(self) -> str:
        """What a queue's Huey instance depends on, hashed: callers that pass different
        settings (another Redis, a rotated secret) get their own instance. Cached as a plain
        attribute: every enqueue reads it (a pydantic private attribute costs a __getattr__)."""
        parts = (self.redis_connection_url(), self.redis_username or "",
                 self.redis_sentinels, repr(sorted(self.redis_tls_kwargs().items())),
                 self.redis_sentinel_master, self.redis_key_prefix,
                 self.signing_secret.get_secret_value(), *self.previous_signing_secrets,
                 repr(self.lease_seconds), str(self.max_deliveries), self.task_modules)
        return hashlib.sha256("\0".join(parts).encode()).hexdigest()

    @property
    def queues(self) -> list[str]:
        return self.worker_queues.split(",")

    def redis_user(self) -> str:
        """The Redis ACL user this process connects as (`default` when none is named)."""
        return self.redis_target().username or "default"

    def redis_target(self) -> RedisTarget:
        """Where Redis is: one URL, or sentinels and the name they monitor."""
        url = self.redis_url.get_secret_value() if self.redis_url is not None else ""
        password = self.redis_password.get_secret_value() if self.redis_password else None
        username = self.redis_username
        sentinel_password = (self.redis_sentinel_password.get_secret_value()
                             if self.redis_sentinel_password else None)
        if url.startswith("redis+sentinel://"):
            rest = url.split("://", 1)[1]
            if "@" in rest:
                auth, rest = rest.rsplit("@", 1)
                user, sep, secret = auth.partition(":")
                password = unquote(secret if sep else auth) or password
                username = (unquote(user) if sep else "") or username
            hosts, _, path = rest.partition("/")
            parts = [p for p in path.split("/") if p]
            master = parts[0] if parts else self.redis_sentinel_master
            db = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else self.redis_db
            return RedisTarget(_host_ports(hosts, "REDIS_URL"), master, password,
                               sentinel_password, db, username=username)
        if self.redis_sentinels.strip():
            return RedisTarget(_host_ports(self.redis_sentinels, "REDIS_SENTINELS"),
                               self.redis_sentinel_master, password, sentinel_password,
                               self.redis_db, username=username)
        if url:  # redis-py takes user and password from the URL alone
            parsed = urlsplit(url)
            password = unquote(parsed.password) if parsed.password else None
            username = unquote(parsed.username) if parsed.username else None
        return RedisTarget((), "", password, None, self.redis_db, url=self.redis_connection_url(),
                           display_address=f"{self.redis_host}:{self.redis_port}",
                           username=username)

    @property
    def wait_replicas(self) -> int:
        if self.redis_wait_replicas is not None:
            return self.redis_wait_replicas
        return 1 if self.redis_target().sentinels else 0

    def redis_connection_url(self) -> str:
        """The URL redis-py connects with; contains the password, so never log it."""
        if self.redis_url is not None:
            return self.redis_url.get_secret_value()
        auth = ""
        if self.redis_password is not None:
            auth = (quote(self.redis_username or "", safe="") + ":"
                    + quote(self.redis_password.get_secret_value(), safe="") + "@")
        scheme = "rediss" if self.tls else "redis"
        return f"{scheme}://{auth}{self.redis_host}:{self.redis_port}/{self.redis_db}"

    def redis_display(self) -> str:
        """Where Redis is, safe for logs."""
        target = self.redis_target()
        if target.sentinels:
            hosts = ",".join(f"{h}:{p}" for h, p in target.sentinels)
            return (f"redis+sentinel://{hosts}/{target.master}/{target.db}"
                    + (" (TLS)" if self.tls else ""))
        if self.redis_url is not None:
            url = self.redis_url.get_secret_value()
            if "@" in url:
                scheme, rest = url.split("://", 1)
                url = f"{scheme}://***@{rest.split('@', 1)[1]}"
            return url
        scheme = "rediss" if self.tls else "redis"
        return f"{scheme}://{self.redis_host}:{self.redis_port}/{self.redis_db}"


@dataclass(frozen=True)
class RedisTarget:
    sentinels: tuple[tuple[str, int], ...]  # empty: one host, at `url`
    master: str
    password: str | None
    sentinel_password: str | None
    db: int
    url: str = ""
    display_address: str = ""
    username: str | None = None  # the ACL user; None: `default`


def _host_ports(text: str, variable: str) -> tuple[tuple[str, int], ...]:
    out = []
    for item in (i.strip() for i in text.split(",")):
        if not item:
            continue
        host, sep, port = item.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{variable} must be host:port[,host:port...], got {item!r}")
        out.append((host.strip("[]"), int(port)))
    if not out:
        raise ValueError(f"{variable} names no sentinel")
    return tuple(out)


def describe_errors(exc: ValidationError, model: type[BaseSettings],
                    what: str = "configuration") -> str:
    """One line per problem, naming the environment variable and the expected form."""
    lines = []
    for error in exc.errors():
        loc = error.get("loc") or ("settings",)
        field = model.model_fields.get(str(loc[0]))
        name = field.alias if field is not None and field.alias else str(loc[0]).upper()
        message = error.get("msg", "invalid value")
        if error.get("type") == "missing":
            message = "is required but not set"
        lines.append(f"  {name}: {message}")
    return f"invalid {what}:\n" + "\n".join(lines)


def load(model: type[ClarityBaseSettings], what: str = "configuration",
         error: type[Exception] = SettingsError, **overrides):
    """Build a settings object; a bad value raises `error` naming the variable."""
    try:
        return model(_env_file=os.environ.get("CLARITY_ENV_FILE", ".env"), **overrides)
    except ValidationError as exc:
        raise error(describe_errors(exc, model, what)) from None


def load_settings(**overrides) -> Settings:
    return load(Settings, **overrides)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()


def reset_settings_cache() -> None:
    get_settings.cache_clear()
