"""The producer API: what the Income Clarity app calls to start background work.

    from app.queue_service import QueueService, SyncType
    service = QueueService().initialize()
    job = service.enqueue_sync(42, SyncType.MANUAL)
    job.id, job.route  # "queue", "legacy" or "fallback"

Every enqueue goes through the migration router (`app.migration.router`): per job, the
queues or the legacy `queued_sync` table, by ENABLE_QUEUE / MIGRATION_MODE and the
runtime rollback switch. A job for the queues that Redis cannot take (down, timeout, OOM)
goes to the legacy table instead when FALLBACK_TO_LEGACY is on; either way the caller
gets a job id. Bad arguments raise `worker.producer.JobError` (naming the argument) before
anything is written; with the fallback off and Redis down, `QueueUnavailable`.

Construction is cheap: instances share one dispatcher (breaker, router, counters) per
process and configuration, so a `QueueService()` per request is fine.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Iterable

import redis

from app.contracts import (
    EMAIL_TASK,
    SYNC_PRIORITY,
    SYNC_TASK,
    WEBHOOK_TASK,
    SyncType,
    email_idempotency_key,
)
from app.dispatch import Dispatcher, Job, QueueUnavailable, Submitted
from app.migration.config import MigrationSettings, get_migration_settings
from app.migration.legacy import LegacyStore
from app.migration.stats import migration_stats
from worker.producer import JobError, JobRequest
from worker.queues import QUEUE_NAMES, Priority
from worker.registry import load_task_modules
from worker.settings import Settings, get_settings

_dispatchers: dict[tuple, Dispatcher] = {}
_lock = threading.Lock()


def _engine():
    from app.db.engine import get_engine

    return get_engine()


def _dispatcher(settings: Settings, migration: MigrationSettings) -> Dispatcher:
    from worker.connections import redis_client

    key = (settings.huey_key, migration.model_dump_json())
    with _lock:
        found = _dispatchers.get(key)
        if found is None:
            found = Dispatcher(settings, migration, redis_client(settings),
                               lambda: LegacyStore(_engine()))
            _dispatchers[key] = found
        return found


def reset_dispatchers() -> None:
    """Forget per-process state (tests; after changing settings)."""
    with _lock:
        _dispatchers.clear()


class QueueService:
    def __init__(self, settings: Settings | None = None,
                 migration: MigrationSettings | None = None):
        self.settings = settings or get_settings()
        self.migration = migration or get_migration_settings()
        self.dispatcher = _dispatcher(self.settings, self.migration)

    def initialize(self) -> QueueService:
        """Load the task declarations and check Redis; a producer calls this at startup.
        Redis being down is not fatal when FALLBACK_TO_LEGACY is on (jobs go to the
        legacy table); otherwise it raises `QueueUnavailable`."""
        load_task_modules(self.settings.task_modules)
        try:
            self.dispatcher.client.ping()
        except redis.RedisError as exc:
            if not self.migration.fallback_to_legacy and self.migration.enable_queue:
                raise QueueUnavailable(
                    f"Redis at {self.settings.redis_display()} is unavailable "
                    f"({type(exc).__name__}) and FALLBACK_TO_LEGACY is off") from exc
        return self

    # -- enqueueing ----------------------------------------------------------------------

    def _one(self, request: JobRequest, user_id=None, sync_type: str | None = None
             ) -> Submitted:
        return self.dispatcher.submit([Job(request, user_id, sync_type)])[0]

    def enqueue(self, queue: str, task: str, payload: dict, priority=None,
                delay: float | None = None, idempotency_key: str | None = None, *,
                scheduled_at: dt.datetime | str | None = None) -> Submitted:
        """Any registered task. Returns `Submitted(id, queue, task, created, route)`."""
        user_id = payload.get("user_id") if isinstance(payload, dict) else None
        return self._one(JobRequest(queue, task, payload, priority, delay, scheduled_at,
                                    idempotency_key), user_id)

    def enqueue_bulk(self, jobs: Iterable[JobRequest | dict]) -> list[Submitted]:
        """Many jobs at once: all validated first (nothing written if one is bad), then
        routed; queue-bound ones are sent in chunks of 500 per Lua call."""
        batch = []
        for item in jobs:
            req = item if isinstance(item, JobRequest) else JobRequest(**item)
            user_id = req.payload.get("user_id") if isinstance(req.payload, dict) else None
            sync_type = req.payload.get("sync_type") if isinstance(req.payload, dict) else None
            batch.append(Job(req, user_id, sync_type))
        return self.dispatcher.submit(batch)

    enqueue_many = enqueue_bulk

    def enqueue_sync(self, user_id: int, sync_type: SyncType | str = SyncType.MANUAL,
                     metadata: dict | None = None, *,
                     idempotency_key: str | None = None) -> Submitted:
        """A user's aggregator sync at its type's priority: MANUAL and INITIAL high,
        SCHEDULED normal, WEBHOOK critical."""
        try:
            sync_type = SyncType(str(getattr(sync_type, "value", sync_type)).upper())
        except ValueError:
            raise JobError("sync_type", f"must be one of {', '.join(t.value for t in SyncType)}"
                           f", got {sync_type!r}") from None
        if isinstance(user_id, bool) or not isinstance(user_id, int) or user_id < 1:
            raise JobError("user_id", f"must be a positive integer, got {user_id!r}")
        if metadata is not None and not isinstance(metadata, dict):
            raise JobError("metadata", "must be a JSON object")
        payload = {"user_id": user_id, "sync_type": sync_type.value}
        if metadata:
            payload["metadata"] = metadata
        queue, task = SYNC_TASK
        return self._one(JobRequest(queue, task, payload, SYNC_PRIORITY[sync_type],
                                    idempotency_key=idempotency_key), user_id, sync_type.value)

    def enqueue_email(self, email_type: str, email_data: dict, priority=Priority.NORMAL,
                      delay: float | None = None, scheduled_at=None, *,
                      idempotency_key: str | None = None) -> Submitted:
        """One transactional email: `email_type` is the template, `email_data` holds "to"
        and either "context" or the template's fields. The same template, recipient and
        context is the same email (the handlers' key), so a repeat is not sent twice."""
        if not isinstance(email_type, str) or not email_type:
            raise JobError("email_type", "must be a template name")
        if not isinstance(email_data, dict):
            raise JobError("email_data", "must be a JSON object")
        to = email_data.get("to")
        if not isinstance(to, str) or "@" not in to:
            raise JobError("email_data", "needs 'to', an email address")
        context = email_data.get("context")
        if context is None:
            context = {k: v for k, v in email_data.items() if k not in ("to", "headers")}
        payload = {"template": email_type, "to": to, "context": context}
        if email_data.get("headers"):
            payload["headers"] = email_data["headers"]
        key = idempotency_key or email_idempotency_key(payload)
        payload["idempotency_key"] = key
        key = f"email:{key}"
        queue, task = EMAIL_TASK
        return self._one(JobRequest(queue, task, payload, priority, delay, scheduled_at, key),
                         email_data.get("user_id") or context.get("user_id"))

    def process_webhook(self, user_id: int | None, webhook_data: dict,
                        priority=Priority.HIGH, *,
                        idempotency_key: str | None = None) -> Submitted:
        """A provider's webhook, HIGH or CRITICAL. `webhook_data` is the handler's payload:
        {"provider", "body" (raw text), "headers" (signature headers), "received_at"}
        (see `app.contracts.webhook_job_payload`). `user_id` places it for the
        testing-mode share."""
        try:
            priority = Priority.parse(priority)
        except ValueError as exc:
            raise JobError("priority", str(exc)) from None
        if priority not in (Priority.HIGH, Priority.CRITICAL):
            raise JobError("priority", "a webhook runs at HIGH or CRITICAL")
        if not isinstance(webhook_data, dict):
            raise JobError("webhook_data", "must be a JSON object")
        payload = dict(webhook_data)
        payload.setdefault("received_at", time.time())
        queue, task = WEBHOOK_TASK
        return self._one(JobRequest(queue, task, payload, priority,
                                    idempotency_key=idempotency_key), user_id, "WEBHOOK")

    # -- looking -------------------------------------------------------------------------

    def _manager(self):
        from worker.management import QueueManager

        return QueueManager(self.settings, self.dispatcher.client)

    def get_queue_status(self) -> dict:
        """Per queue: waiting (by priority), delayed, active, failed, paused."""
        if self.dispatcher.breaker.state.value != "closed":
            return {"available": False, "queues": {}}
        try:
            return {"available": True, "queues": self._manager().counts_all()}
        except redis.RedisError as exc:
            return {"available": False, "error": type(exc).__name__, "queues": {}}

    def migration_stats(self) -> dict:
        d = self.dispatcher
        return migration_stats(d.router, d.store, d.client, self.settings.redis_key_prefix,
                               d.breaker.snapshot(), d.counters)

    def get_detailed_stats(self) -> dict:
        status = self.get_queue_status()
        totals = {}
        for counts in status.get("queues", {}).values():
            for name, value in counts.items():
                if isinstance(value, int) and not isinstance(value, bool):
                    totals[name] = totals.get(name, 0) + value
        return {"queues": status.get("queues", {}), "redisAvailable": status["available"],
                "totals": totals, "migration": self.migration_stats(),
                "timestamp": dt.datetime.now(dt.UTC).isoformat()}

    def health_check(self) -> dict:
        """{"healthy": bool, "redis": {...}, "database": {...}, "breaker": ...}: healthy
        while jobs can be taken somewhere (Redis, or the legacy table with the fallback)."""
        out: dict = {"breaker": self.dispatcher.breaker.snapshot()}
        started = time.perf_counter()
        try:
            self.dispatcher.client.ping()
            out["redis"] = {"ok": True, "ms": round((time.perf_counter() - started) * 1000, 2)}
        except redis.RedisError as exc:
            out["redis"] = {"ok": False, "error": type(exc).__name__}
        started = time.perf_counter()
        try:
            import sqlalchemy as sa

            with self.dispatcher.store.engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
            out["database"] = {"ok": True,
                               "ms": round((time.perf_counter() - started) * 1000, 2)}
        except Exception as exc:  # noqa: BLE001 - reported, not raised
            out["database"] = {"ok": False, "error": type(exc).__name__}
        legacy_ok = self.migration.fallback_to_legacy and out["database"]["ok"]
        out["healthy"] = bool(out["redis"]["ok"] or legacy_ok)
        out["queues"] = list(QUEUE_NAMES)
        return out


__all__ = ["JobError", "QueueService", "QueueUnavailable", "Submitted", "SyncType"]
