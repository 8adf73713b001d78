"""Enqueueing jobs: validation first, then one Redis round trip.

Every argument is checked before Redis is touched, and a bad one raises `JobError` whose
message names the argument. Handlers that enqueue follow-up jobs use this module too
(`worker` never imports `app`).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import secrets
from dataclasses import dataclass

from worker.hueys import eta_ms, get_huey
from worker.messages import dumps
from worker.queues import Priority, check_queue
from worker.registry import TaskSpec, get_spec, load_task_modules
from worker.settings import Settings, get_settings
from worker.storage import WireJob

MAX_PAST_SCHEDULE = dt.timedelta(days=1)
MAX_DELAY = dt.timedelta(days=366)
DEFAULT_MAX_PAYLOAD_BYTES = 64 * 1024


def new_job_id() -> str:
    """128 random bits, base64url: 22 characters (an id is stored three times per job)."""
    return secrets.token_urlsafe(16)


class JobError(ValueError):
    """A job request is invalid; `field` names the offending argument."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.reason = message


@dataclass(frozen=True)
class JobRequest:
    queue: str
    task: str
    payload: dict
    priority: int | str | None = None
    delay: float | None = None
    scheduled_at: dt.datetime | str | None = None
    idempotency_key: str | None = None
    job_id: str | None = None


@dataclass(frozen=True)
class ValidatedJob:
    """A request that passed `validate`: what Redis gets, ready to encode."""

    request: JobRequest
    spec: TaskSpec
    payload_json: bytes  # the payload, encoded once
    priority: int
    eta: dt.datetime | None  # naive UTC, for people and the legacy table; None: run now
    delay_ms: int = 0  # "in N seconds": Redis' clock turns it into the due time
    idempotency_ttl: float | None = None  # seconds the key is kept; None: IDEMPOTENCY_TTL

    @property
    def queue(self) -> str:
        return self.request.queue

    @property
    def task(self) -> str:
        return self.spec.name


@dataclass(frozen=True)
class EnqueuedJob:
    id: str
    queue: str
    task: str
    created: bool  # False: the idempotency key was seen before; `id` is the first job's


def validate(req: JobRequest, max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
             ) -> ValidatedJob:
    """Check every argument of `req` without touching Redis; raises JobError naming the
    first bad one."""
    try:
        check_queue(req.queue)
    except ValueError as exc:
        raise JobError("queue", str(exc)) from None
    try:
        spec = get_spec(req.queue, req.task)
    except ValueError as exc:
        raise JobError("task", str(exc)) from None
    if spec.periodic:
        raise JobError("task", f"{req.task!r} is periodic and runs on its schedule only")
    if not isinstance(req.payload, dict):
        raise JobError("payload", f"must be a JSON object, got {type(req.payload).__name__}")
    try:
        encoded = json.dumps(req.payload, allow_nan=False, separators=(",", ":")).encode()
    except (TypeError, ValueError) as exc:
        raise JobError("payload", f"is not JSON data ({exc})") from None
    if len(encoded) > max_payload_bytes:
        raise JobError("payload", f"is {len(encoded)} bytes; the limit is {max_payload_bytes}")
    try:
        priority = spec.priority if req.priority is None else Priority.parse(req.priority)
    except ValueError as exc:
        raise JobError("priority", str(exc)) from None
    eta = _resolve_eta(req.delay, req.scheduled_at)
    delay_ms = int(req.delay * 1000) if req.delay else 0
    if req.idempotency_key is not None:
        key = req.idempotency_key
        if not isinstance(key, str) or not 1 <= len(key) <= 200 or not key.isprintable():
            raise JobError("idempotency_key", "must be 1..200 printable characters")
    return ValidatedJob(req, spec, encoded, priority, eta, delay_ms)


def _resolve_eta(delay, scheduled_at):
    if delay is not None and scheduled_at is not None:
        raise JobError("delay", "give either delay or scheduled_at, not both")
    if delay is None and scheduled_at is None:
        return None
    now = dt.datetime.now(dt.UTC)
    if delay is not None:
        if isinstance(delay, bool) or not isinstance(delay, int | float) or not math.isfinite(
                delay) or delay < 0:
            raise JobError("delay", f"must be a number of seconds >= 0, got {delay!r}")
        if delay > MAX_DELAY.total_seconds():
            raise JobError("delay", "must be at most one year")
        return None if delay == 0 else (now + dt.timedelta(seconds=delay)).replace(tzinfo=None)
    if scheduled_at is None:
        return None
    if isinstance(scheduled_at, str):
        try:
            scheduled_at = dt.datetime.fromisoformat(scheduled_at)
        except ValueError:
            raise JobError("scheduled_at", "must be an ISO 8601 time with a UTC offset, "
                                           "e.g. 2026-01-31T09:00:00Z") from None
    if not isinstance(scheduled_at, dt.datetime):
        raise JobError("scheduled_at", "must be a datetime or an ISO 8601 string")
    if scheduled_at.tzinfo is None:
        raise JobError("scheduled_at", "must be timezone-aware (naive times are ambiguous)")
    if scheduled_at < now - MAX_PAST_SCHEDULE:
        raise JobError("scheduled_at", "is more than a day in the past")
    if scheduled_at > now + MAX_DELAY:
        raise JobError("scheduled_at", "is more than a year ahead")
    return scheduled_at.astimezone(dt.UTC).replace(tzinfo=None)


def enqueue(queue: str, task: str, payload: dict, *, priority=None, delay=None,
            scheduled_at=None, idempotency_key=None, settings: Settings | None = None,
            max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES) -> EnqueuedJob:
    """Enqueue one job (one round trip); see `enqueue_many`."""
    settings = settings or get_settings()
    load_task_modules(settings.task_modules)
    job = validate(JobRequest(queue, task, payload, priority, delay, scheduled_at,
                              idempotency_key), max_payload_bytes)
    huey = get_huey(queue, settings)
    job_id = new_job_id()
    [(created, job_id)] = huey.storage.enqueue_jobs(
        [_wire(huey, job, job_id)], fresh=True)
    return EnqueuedJob(job_id, queue, job.task, created)


def _wire(huey, job: ValidatedJob, job_id: str) -> tuple:
    """What the storage's enqueue script takes for one job."""
    spec = job.spec
    data = huey.serializer.encode_new_job(job_id, spec.name, job.payload_json, job.priority,
                                          job.eta, spec.retries, spec.retry_delay,
                                          spec.timeout)
    return WireJob(job_id, data, job.priority, 0 if job.delay_ms else eta_ms(job.eta),
                   job.delay_ms, spec.name, job.request.idempotency_key,
                   idempotency_ttl=job.idempotency_ttl)


def enqueue_many(requests: list[JobRequest | ValidatedJob], *,
                 settings: Settings | None = None,
                 max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
                 chunk_size: int = 500) -> list[EnqueuedJob]:
    """Validate every request (a `ValidatedJob` is taken as it is), then enqueue them with
    one Lua call per queue and chunk. Nothing is enqueued if any request is invalid."""
    settings = settings or get_settings()
    load_task_modules(settings.task_modules)
    checked = [r if isinstance(r, ValidatedJob) else validate(r, max_payload_bytes)
               for r in requests]
    by_queue: dict[str, list[int]] = {}
    for index, job in enumerate(checked):
        by_queue.setdefault(job.queue, []).append(index)
    results: list[EnqueuedJob | None] = [None] * len(checked)
    for queue, indexes in by_queue.items():
        huey = get_huey(queue, settings)
        for start in range(0, len(indexes), chunk_size):
            chunk = indexes[start:start + chunk_size]
            ids = [checked[i].request.job_id or new_job_id() for i in chunk]
            jobs = [_wire(huey, checked[i], job_id) for i, job_id in zip(chunk, ids, strict=True)]
            fresh = all(checked[i].request.job_id is None for i in chunk)
            enqueued = huey.storage.enqueue_jobs(jobs, fresh=fresh)
            for i, (created, job_id) in zip(chunk, enqueued, strict=True):
                results[i] = EnqueuedJob(job_id, queue, checked[i].task, created)
    return results  # type: ignore[return-value]


__all__ = ["EnqueuedJob", "JobError", "JobRequest", "ValidatedJob", "dumps", "enqueue",
           "enqueue_many", "validate"]
