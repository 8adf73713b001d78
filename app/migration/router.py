"""Per job: legacy table or queue.

Order of questions:
1. The rollback switch (`clarity migrate rollback`) in Redis: "legacy" sends everything to
   the legacy table, in every producer within `MIGRATION_OVERRIDE_TTL` seconds. Operators
   can also set a mode (and percentage) there at runtime (`clarity migrate set-mode`).
2. ENABLE_QUEUE off: legacy.
3. MIGRATION_MODE:
   - testing: a fixed share of users. sha256 of the user id (never Python's `hash`, which
     is salted per process) maps each user to a point in [0, 100); users below
     MIGRATION_PERCENTAGE use the queues, always the same users, on every host. A job
     without a user id is placed by its job id instead.
   - gradual: by priority. Webhooks first (the webhook queue and WEBHOOK syncs always
     migrate), then MIGRATE_HIGH_PRIORITY (priority >= 5), MIGRATE_MEDIUM_PRIORITY (3..4),
     MIGRATE_LOW_PRIORITY (1..2).
   - immediate: every new job uses the queues.

The switch is cached per process; when Redis cannot be asked (down, or the breaker is
open) the last value read stands, or the environment's configuration if none was ever
read: the router always decides, and the enqueue's own fallback handles the outage.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from dataclasses import dataclass

import redis

from app.migration.config import MigrationMode, MigrationSettings
from worker.queues import Priority

log = logging.getLogger("clarity.migration.router")

QUEUE, LEGACY = "queue", "legacy"
ROLLBACK_MODE = "legacy"
OVERRIDE_MODES = (ROLLBACK_MODE, *(m.value for m in MigrationMode))


@dataclass(frozen=True)
class Route:
    target: str  # "queue" or "legacy"
    reason: str


def user_bucket(key) -> float:
    """A stable point in [0, 100) for a user id (or any key)."""
    digest = hashlib.sha256(str(key).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 * 100


def override_key(prefix: str) -> str:
    return f"{prefix}:migration:mode"


@dataclass(frozen=True)
class Override:
    mode: str
    percentage: float | None = None
    set_at: str | None = None
    set_by: str | None = None

    @classmethod
    def from_hash(cls, raw: dict) -> Override | None:
        data = {(k.decode() if isinstance(k, bytes) else k):
                (v.decode() if isinstance(v, bytes) else v) for k, v in raw.items()}
        mode = data.get("mode")
        if mode not in OVERRIDE_MODES:
            return None
        pct = data.get("percentage")
        try:
            percentage = float(pct) if pct not in (None, "") else None
        except ValueError:
            percentage = None
        return cls(mode, percentage, data.get("set_at"), data.get("set_by"))


def read_override(client: redis.Redis, prefix: str) -> Override | None:
    return Override.from_hash(client.hgetall(override_key(prefix)))


def write_override(client: redis.Redis, prefix: str, mode: str,
                   percentage: float | None = None, by: str = "cli") -> Override:
    if mode not in OVERRIDE_MODES:
        raise ValueError(f"mode must be one of {', '.join(OVERRIDE_MODES)}, got {mode!r}")
    if percentage is not None and not 0 <= percentage <= 100:
        raise ValueError(f"percentage must be between 0 and 100, got {percentage}")
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    mapping = {"mode": mode, "set_at": stamp, "set_by": by,
               "percentage": "" if percentage is None else str(percentage)}
    client.hset(override_key(prefix), mapping=mapping)
    return Override(mode, percentage, stamp, by)


def clear_override(client: redis.Redis, prefix: str) -> bool:
    return bool(client.delete(override_key(prefix)))


class Router:
    def __init__(self, settings: MigrationSettings, client: redis.Redis | None = None,
                 prefix: str = "clarity", can_ask=lambda: True, clock=time.monotonic):
        self.settings = settings
        self.client = client
        self.prefix = prefix
        self.can_ask = can_ask  # e.g. "the breaker is closed"
        self.clock = clock
        self._lock = threading.Lock()
        self._override: Override | None = None
        self._read_at: float | None = None

    def override(self) -> Override | None:
        """The runtime switch, re-read at most every MIGRATION_OVERRIDE_TTL seconds."""
        if self.client is None:
            return None
        now = self.clock()
        with self._lock:
            fresh = self._read_at is not None and \
                now - self._read_at < self.settings.migration_override_ttl
            if fresh:
                return self._override
            self._read_at = now  # one reader per period; the others use the cached value
        if not self.can_ask():
            return self._override
        try:
            value = read_override(self.client, self.prefix)
        except redis.RedisError as exc:
            log.debug("cannot read the migration switch (%s); keeping %s", exc, self._override)
            return self._override
        with self._lock:
            self._override = value
        return value

    def forget(self) -> None:
        with self._lock:
            self._read_at = None

    def effective(self) -> tuple[str, float, str]:
        """(mode, percentage, source): mode is 'legacy' when queues are off or rolled back."""
        s = self.settings
        current = self.override()
        if current is not None:
            pct = current.percentage if current.percentage is not None \
                else s.migration_percentage
            return current.mode, pct, "override"
        if not s.enable_queue:
            return ROLLBACK_MODE, s.migration_percentage, "ENABLE_QUEUE"
        return s.migration_mode.value, s.migration_percentage, "MIGRATION_MODE"

    def decide(self, queue: str, task: str, priority: int, user_id=None,
               job_key: str | None = None, sync_type: str | None = None) -> Route:
        mode, percentage, source = self.effective()
        if mode == ROLLBACK_MODE:
            return Route(LEGACY, "rolled back" if source == "override" else "ENABLE_QUEUE off")
        if mode == MigrationMode.IMMEDIATE.value:
            return Route(QUEUE, "immediate")
        if mode == MigrationMode.TESTING.value:
            key = user_id if user_id is not None else job_key
            if key is not None and user_bucket(key) < percentage:
                return Route(QUEUE, f"testing: in the {percentage:g} %")
            return Route(LEGACY, f"testing: outside the {percentage:g} %")
        # gradual
        s = self.settings
        if queue == "webhook" or (sync_type or "").upper() == "WEBHOOK":
            return Route(QUEUE, "gradual: webhooks first")
        if priority >= Priority.HIGH:
            flag, name = s.migrate_high_priority, "MIGRATE_HIGH_PRIORITY"
        elif priority >= Priority.NORMAL:
            flag, name = s.migrate_medium_priority, "MIGRATE_MEDIUM_PRIORITY"
        else:
            flag, name = s.migrate_low_priority, "MIGRATE_LOW_PRIORITY"
        return Route(QUEUE if flag else LEGACY, f"gradual: {name} {'on' if flag else 'off'}")
