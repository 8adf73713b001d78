"""The permanent producer path, under every `QueueService` enqueue: route, then queue
through the circuit breaker, or the legacy table.

Exactly once across the two paths. Each job gets its id and an idempotency key *before*
anything is sent (the caller's key, or `job:<id>`). Then:

- Routed to legacy: a `queued_sync` row (origin "routed") with that id and key.
- Routed to the queue, breaker closed: the enqueue goes to Redis with the key.
  - It succeeds: done.
  - It fails before anything was sent (connection refused) or Redis refused it (OOM,
    READONLY, LOADING...): the job is certainly not in Redis. Row with origin "fallback";
    the legacy poller runs it in-process.
  - It fails after the job may have been sent (timeout, connection dropped while waiting
    for the reply): the job may or may not be in Redis. Row with origin
    "fallback_unsure"; the legacy poller never runs such a row itself but hands it back to
    the queue with the same id and key when Redis answers. If the first attempt did land,
    the queue's idempotency check answers "seen" and nothing is added: one execution.
- Breaker open: not even tried; row with origin "fallback".

Without FALLBACK_TO_LEGACY the caller gets `QueueUnavailable`, never a silent drop.

Bulk enqueues are sent in chunks, so a failure leaves earlier chunks queued and only the
failing chunk (and the rest) in the table.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, replace

import redis
from redis import exceptions

from app.migration.breaker import CircuitBreaker
from app.migration.config import MigrationSettings
from app.migration.legacy import LegacyStore, NewRow, Origin
from app.migration.router import LEGACY, QUEUE, Router
from worker.producer import JobRequest, enqueue_many, new_job_id, validate
from worker.registry import load_task_modules
from worker.settings import Settings

log = logging.getLogger("clarity.migration.fallback")

CHUNK = 500
# Redis answered, refusing the command: nothing was written.
REFUSALS = ("OOM", "READONLY", "LOADING", "MASTERDOWN", "NOAUTH", "WRONGPASS", "BUSY",
            "MISCONF", "NOREPLICAS", "CLUSTERDOWN", "TRYAGAIN")


class QueueUnavailable(RuntimeError):
    """Redis cannot take the job and FALLBACK_TO_LEGACY is off."""


@dataclass(frozen=True)
class Submitted:
    id: str
    queue: str
    task: str
    created: bool
    route: str  # "queue", "legacy" (routed there), "fallback"
    reason: str = ""


# redis-py strips the error code from these, so match them by class.
REFUSAL_TYPES = (exceptions.OutOfMemoryError, exceptions.ReadOnlyError,
                 exceptions.BusyLoadingError, exceptions.MasterDownError,
                 exceptions.NoPermissionError, exceptions.TryAgainError,
                 exceptions.ClusterDownError, exceptions.AuthenticationError)


def certainly_not_sent(exc: Exception) -> bool:
    """True when Redis surely holds nothing of the call: refused before running it (OOM,
    read-only replica, loading, ...) or never reached (connection refused). A timeout or
    a connection lost while waiting for the reply is "unsure"."""
    if isinstance(exc, REFUSAL_TYPES):
        return True
    if isinstance(exc, redis.ResponseError):
        return str(exc).split(" ", 1)[0].upper() in REFUSALS
    if isinstance(exc, redis.ConnectionError) and not isinstance(exc, redis.TimeoutError):
        # redis-py: "Error 111 connecting to host:port. Connection refused."
        return " connecting to " in str(exc)
    return False


class Counters:
    """Jobs routed each way, counted in-process and added to a Redis hash at most once a
    second (one HINCRBY pipeline, never a round trip per job); kept while Redis is down."""

    FIELDS = ("queue", "legacy", "fallback", "fallback_unsure")

    def __init__(self, key: str, interval: float = 1.0):
        self.key = key
        self.interval = interval
        self._lock = threading.Lock()
        self._pending = dict.fromkeys(self.FIELDS, 0)
        self.totals = dict.fromkeys(self.FIELDS, 0)  # this process, since start
        self._flushed_at = time.monotonic()

    def add(self, field: str, n: int = 1) -> None:
        with self._lock:
            self._pending[field] += n
            self.totals[field] += n

    def flush(self, client: redis.Redis, force: bool = False) -> None:
        with self._lock:
            if not force and time.monotonic() - self._flushed_at < self.interval:
                return
            pending = {k: v for k, v in self._pending.items() if v}
            self._pending = dict.fromkeys(self.FIELDS, 0)
            self._flushed_at = time.monotonic()
        if not pending:
            return
        try:
            pipe = client.pipeline(transaction=False)
            for field, n in pending.items():
                pipe.hincrby(self.key, field, n)
            pipe.execute()
        except redis.RedisError:
            with self._lock:  # try again next time
                for field, n in pending.items():
                    self._pending[field] += n


def stats_key(prefix: str) -> str:
    return f"{prefix}:migration:routed"


@dataclass(frozen=True)
class Job:
    request: JobRequest
    user_id: object = None
    sync_type: str | None = None


class Dispatcher:
    def __init__(self, settings: Settings, migration: MigrationSettings, client: redis.Redis,
                 store_factory, breaker: CircuitBreaker | None = None,
                 router: Router | None = None):
        self.settings = settings
        self.migration = migration
        self.client = client
        self._store_factory = store_factory
        self._store: LegacyStore | None = None
        self.breaker = breaker or CircuitBreaker(migration.breaker_failure_threshold,
                                                 migration.breaker_reset_seconds)
        self.router = router or Router(
            migration, client, settings.redis_key_prefix,
            can_ask=lambda: self.breaker.state.value == "closed")
        self.counters = Counters(stats_key(settings.redis_key_prefix))
        load_task_modules(settings.task_modules)

    @property
    def store(self) -> LegacyStore:
        if self._store is None:
            self._store = self._store_factory()
        return self._store

    def submit(self, jobs: list[Job]) -> list[Submitted]:
        # 1. Validate all (JobError before anything is written anywhere), fix ids and keys.
        # The queue gets an idempotency key of ours only when an unsure fallback could hand
        # the job back later (FALLBACK_TO_LEGACY): it is what stops a double run then.
        own_keys = self.migration.fallback_to_legacy
        prepared = []
        for job in jobs:
            req = job.request
            checked = validate(req)
            job_id = req.job_id or new_job_id()
            key = req.idempotency_key or (f"job:{job_id}" if own_keys else None)
            ttl = (None if req.idempotency_key or not own_keys
                   else self.migration.fallback_dedupe_seconds)
            fixed = replace(req, priority=checked.priority, idempotency_key=key, job_id=job_id)
            prepared.append((job, replace(checked, request=fixed, idempotency_ttl=ttl),
                             checked.eta, req.idempotency_key is not None))
        # 2. Route.
        results: list[Submitted | None] = [None] * len(prepared)
        to_queue, to_legacy = [], []
        for i, (job, checked, _eta, _own_key) in enumerate(prepared):
            req = checked.request
            route = self.router.decide(req.queue, req.task, int(req.priority), job.user_id,
                                       req.job_id, job.sync_type)
            (to_queue if route.target == QUEUE else to_legacy).append((i, route.reason))
        # 3. The legacy share.
        if to_legacy:
            self._write(prepared, to_legacy, Origin.ROUTED, results)
        # 4. The queue share: per queue, chunk by chunk through the breaker. One call holds
        # one queue's jobs, so a failure can only be about the jobs of that call: what
        # landed before it stays in the queues and never falls back (no double runs).
        by_queue: dict[str, list] = {}
        for item in to_queue:
            by_queue.setdefault(prepared[item[0]][1].queue, []).append(item)
        calls = [items[s:s + CHUNK] for items in by_queue.values()
                 for s in range(0, len(items), CHUNK)]
        for n, chunk in enumerate(calls):
            if not self.breaker.allow():
                rest = [item for later in calls[n:] for item in later]
                self._fallback(prepared, rest, Origin.FALLBACK, results, "circuit breaker open")
                break
            try:
                done = enqueue_many([prepared[i][1] for i, _ in chunk], settings=self.settings)
            except redis.RedisError as exc:
                self.breaker.failure()
                sure = certainly_not_sent(exc)
                log.warning("Redis cannot take %d job(s) (%s: %s)", len(chunk),
                            type(exc).__name__, exc)
                self._fallback(prepared, chunk, Origin.FALLBACK if sure
                               else Origin.FALLBACK_UNSURE, results,
                               f"{type(exc).__name__}: {exc}", exc)
                continue
            except BaseException:
                self.breaker.cancel()
                raise
            self.breaker.success()
            for (i, reason), enq in zip(chunk, done, strict=True):
                results[i] = Submitted(enq.id, enq.queue, enq.task, enq.created, QUEUE, reason)
            self.counters.add("queue", len(chunk))
        if self.breaker.state.value == "closed":
            self.counters.flush(self.client)
        return results  # type: ignore[return-value]

    def _fallback(self, prepared, items, origin, results, why, exc=None):
        if not self.migration.fallback_to_legacy:
            raise QueueUnavailable(
                f"Redis cannot take the job ({why}) and FALLBACK_TO_LEGACY is off; "
                "nothing was enqueued" if exc is None or origin == Origin.FALLBACK else
                f"Redis cannot take the job ({why}) and FALLBACK_TO_LEGACY is off; the job "
                "may or may not have reached the queue: retry with the same idempotency key"
            ) from exc
        self._write(prepared, [(i, why) for i, _ in items], origin, results)

    def _write(self, prepared, items, origin, results):
        rows = []
        for i, _reason in items:
            _job, checked, eta, own_key = prepared[i]
            req = checked.request
            row_origin = origin
            if origin == Origin.FALLBACK and own_key:
                # The caller's key may have been used before, by a job that is in Redis:
                # only the queue's idempotency check can tell, so this row goes through it.
                row_origin = Origin.FALLBACK_UNSURE
            rows.append(NewRow(req.queue, req.task, req.payload, int(req.priority), row_origin,
                               req.job_id, req.idempotency_key or f"job:{req.job_id}", eta))
        ids = self.store.insert(rows)
        route = LEGACY if origin == Origin.ROUTED else "fallback"
        for (i, reason), job_id, row in zip(items, ids, rows, strict=True):
            results[i] = Submitted(job_id, row.queue, row.task, job_id == row.job_id, route,
                                   reason)
            self.counters.add("legacy" if row.origin == Origin.ROUTED else row.origin)
