"""What the admin API and the dashboard do, shared by both: read views and mutations.

Requests are validated against the schemas in `app.admin.params` (the same the OpenAPI
document serves) and a bad one raises `ApiError` naming the field; the views only parse
the HTTP request and pick the caller's identity. Payloads are shown as the caller's key
allows (`app.admin.redact`).
"""

from __future__ import annotations

import datetime as dt
import threading
import time

import redis
from flask import current_app

from app.admin import audit
from app.admin.auth import may_see_payloads
from app.admin.errors import ApiError
from app.admin.params import (
    LIST_STATES,
    MUTATIONS,
    QUEUE_ALIAS,
    READ_ACTIONS,
    parse_mutation,
)
from app.admin.redact import present
from worker.management import QueueManager
from worker.queues import QUEUE_NAMES

__all__ = ["LIST_STATES", "MUTATIONS", "QUEUE_ALIAS", "READ_ACTIONS", "parse_mutation"]


def manager() -> QueueManager:
    return current_app.extensions["clarity_manager"]


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def encode_cursor(position: int) -> str:
    return str(position)


def page_start(query: dict) -> int:
    if "cursor" in query:
        return int(query["cursor"])
    return int(query.get("offset", 0))


# -- read views ----------------------------------------------------------------------------

MIGRATION_CACHE_SECONDS = 5.0


class ViewCache:
    """An app's cached read views (`app.extensions["clarity_views"]`): the overview for
    OVERVIEW_CACHE_SECONDS, migration progress for a few seconds. Per app, so two apps in
    one process (tests, several blueprints' setups) never see each other's figures."""

    def __init__(self):
        self.lock = threading.Lock()
        self.overview: tuple[float, dict, bytes] | None = None
        self.migration: tuple[float, dict | None] | None = None
        self.series: dict[tuple, tuple[float, dict]] = {}

    def clear(self) -> None:
        with self.lock:
            self.overview = None


def views() -> ViewCache:
    return current_app.extensions["clarity_views"]


def migration_status() -> dict | None:
    """MIGRATION PROGRESS HOOK: the legacy migration (app.queue_service / app.migration)
    reports its progress; the overview and the dashboard show it when present.
    `CLARITY_MIGRATION_STATUS` in the app config may be a callable instead (tests, or to
    switch the panel off with `lambda: None`)."""
    if "CLARITY_MIGRATION_STATUS" in current_app.config:
        provider = current_app.config["CLARITY_MIGRATION_STATUS"]
        return provider() if provider is not None else None
    # Progress moves slowly and costs SQL queries: refreshed at most every few seconds.
    now, cache = time.monotonic(), views()
    with cache.lock:
        hit = cache.migration
    if hit is not None and hit[0] > now:
        return hit[1]
    value = _read_migration_status()
    with cache.lock:
        cache.migration = (now + MIGRATION_CACHE_SECONDS, value)
    return value


def _read_migration_status() -> dict | None:
    from app.migration.stats import current_migration_stats

    try:
        return current_migration_stats(current_app.config["CLARITY_SETTINGS"],
                                       client=current_app.extensions["clarity_redis"])
    except Exception:  # a panel must never break the overview
        current_app.logger.warning("migration status unavailable", exc_info=True)
        return None


# Only the sections shown: the full INFO text costs more to parse than the rest of the
# overview together.
INFO_SECTIONS = ("server", "clients", "memory", "replication")


def redis_health() -> dict:
    client = current_app.extensions["clarity_redis"]
    started = time.perf_counter()
    try:
        info = client.info(*INFO_SECTIONS)
    except redis.RedisError as exc:
        return {"ok": False, "error": type(exc).__name__}
    return _redis_summary(info, (time.perf_counter() - started) * 1000)


def _redis_summary(info: dict, latency: float) -> dict:
    return {
        "ok": True,
        "latencyMs": round(latency, 2),
        "version": info.get("redis_version"),
        "uptimeSeconds": info.get("uptime_in_seconds"),
        "usedMemoryBytes": info.get("used_memory"),
        "maxMemoryBytes": info.get("maxmemory"),
        "maxMemoryPolicy": info.get("maxmemory_policy"),
        "connectedClients": info.get("connected_clients"),
        "role": info.get("role"),
    }


def overview() -> dict:
    return _overview()[0]


def overview_json() -> bytes:
    """The overview serialized once per cache interval, not once per request."""
    return _overview()[1]


def _overview() -> tuple[dict, bytes]:
    ttl = current_app.config["CLARITY_ADMIN"].overview_cache_seconds
    now, cache = time.monotonic(), views()
    if ttl > 0:
        with cache.lock:
            hit = cache.overview
        if hit is not None and hit[0] > now:
            return hit[1], hit[2]
    started = time.perf_counter()
    try:
        # Counts, heartbeats and INFO in one round trip.
        counts, workers, info = manager().snapshot(info_sections=INFO_SECTIONS)
    except redis.RedisError:
        raise ApiError(503, "the queue store (Redis) is unavailable",
                       headers={"Retry-After": "5"}) from None
    redis_info = _redis_summary(info, (time.perf_counter() - started) * 1000)
    queues = [{"name": q, **counts[q]} for q in QUEUE_NAMES]
    body = {
        "generatedAt": now_iso(),
        "queues": queues,
        "totals": {
            state: sum(q[state] for q in queues)
            for state in ("waiting", "delayed", "active", "failed")
        },
        "workers": workers,
        "workersAlive": sum(1 for w in workers if w.get("alive")),
        "redis": redis_info,
        "migration": migration_status(),
    }
    encoded = current_app.json.dumps(body).encode()
    if ttl > 0:
        with cache.lock:
            cache.overview = (now + ttl, body, encoded)
    return body, encoded


def health() -> tuple[dict, int]:
    redis_info = redis_health()
    body = {"status": "ok", "checkedAt": now_iso(), "redis": redis_info}
    if not redis_info["ok"]:
        body["status"] = "down"
        return body, 503
    counts = manager().counts_all()
    workers = manager().workers()
    alive_by_queue = {q: 0 for q in QUEUE_NAMES}
    for w in workers:
        if w.get("alive") and w.get("queue") in alive_by_queue:
            alive_by_queue[w["queue"]] += 1
    problems = []
    for q in QUEUE_NAMES:
        if counts[q]["expiredLeases"]:
            problems.append(f"{q}: {counts[q]['expiredLeases']} expired leases")
        if counts[q]["waiting"] and not alive_by_queue[q] and not counts[q]["paused"]:
            problems.append(f"{q}: jobs waiting and no live worker")
    body.update({
        "workers": {"alive": sum(alive_by_queue.values()), "seen": len(workers),
                    "aliveByQueue": alive_by_queue},
        "problems": problems,
    })
    if problems:
        body["status"] = "degraded"
    return body, 200


def stats(queue: str) -> dict:
    return {"queue": queue, "generatedAt": now_iso(), "counts": manager().counts(queue),
            "workers": [w for w in manager().workers() if w.get("queue") == queue]}


def list_jobs(queue: str, state: str, query: dict | None = None) -> dict:
    """A page of jobs; with `task` or `errorType` a filtered page that reads at most a few
    thousand ids per call (`nextCursor` continues the scan)."""
    query = query or {}
    limit, start = int(query.get("limit", 50)), page_start(query)
    full = may_see_payloads()
    if query.get("task") or query.get("errorType"):
        found = manager().find_jobs(queue, state, task=query.get("task"),
                                    error_type=query.get("errorType"), start=start,
                                    limit=limit, payloads=True)
        page = {"jobs": found["jobs"], "total": found["total"], "offset": start,
                "limit": found["limit"], "nextOffset": found["nextStart"],
                "filtered": True}
    else:
        page = manager().list_jobs(queue, state, limit, start, payloads=True)
    page["jobs"] = [present(j, full_payload=full, keep_payload=False) for j in page["jobs"]]
    page["queue"], page["state"] = queue, state
    page["nextCursor"] = encode_cursor(page["nextOffset"]) if page["nextOffset"] else None
    return page


def get_job(queue: str | None, job_id: str) -> dict:
    """One job as its page shows it: state, times, lease holder, attempts (each with its
    error and traceback), payload (redacted as the caller's key requires)."""
    m = manager()
    if queue in (None, ""):
        found = m.find_job(job_id)
        queue = found["queue"] if found else None
    job = m.job_detail(queue, job_id) if queue else None
    if job is None:
        raise ApiError(404, f"no job {job_id!r}" + (f" on queue {queue!r}" if queue else "")
                       + " (finished jobs are not kept)", field="id")
    job["history"] = attempts(job)
    return present(job, full_payload=may_see_payloads(), keep_payload=True)


def attempts(job: dict) -> list[dict]:
    """Each failed attempt (oldest first) with its error and traceback: the core's history
    of retried attempts, then the failure that parked the job when it is failed (the core
    keeps that one in the job's own error fields)."""
    history = [dict(h) for h in job.get("history") or []]
    if job.get("state") == "failed" or (job.get("error") and not history):
        final = {"attempt": (history[-1].get("attempt") or len(history)) + 1 if history
                 else job.get("attempts") or 1,
                 "errorType": job.get("errorType"), "error": job.get("error"),
                 "traceback": job.get("traceback"), "reason": job.get("reason"),
                 "at": job.get("lastFailedAt")}
        last = history[-1] if history else None
        if last is None or (last.get("at"), last.get("error")) != (final["at"], final["error"]):
            history.append(final)
    return history


WINDOWS = {"hour": (60, 1), "day": (1440, 15)}  # minutes shown, minutes per point
SERIES_CACHE_SECONDS = {"hour": 2.0, "day": 30.0}


def series(queue: str | None, window: str = "hour") -> dict:
    """Per-queue charts data written by the workers (worker.series): completed and failed
    per minute, waiting depth, pickup latency p50/p95, over the last hour or day."""
    from worker.series import read_series

    minutes, step = WINDOWS[window]
    cache, now, key = views(), time.monotonic(), (queue, window)
    with cache.lock:
        hit = cache.series.get(key)
    if hit is not None and hit[0] > now:
        return hit[1]
    settings = current_app.config["CLARITY_SETTINGS"]
    client = current_app.extensions["clarity_redis"]
    body = {"window": window, "generatedAt": now_iso(), "queues": [
        read_series(client, settings.redis_key_prefix, q, minutes, step)
        for q in ((queue,) if queue else QUEUE_NAMES)]}
    with cache.lock:
        cache.series[key] = (now + SERIES_CACHE_SECONDS[window], body)
    return body


# -- mutations -----------------------------------------------------------------------------

def _job_missing_or_busy(queue: str, job_id: str, wanted: str) -> ApiError:
    job = manager().get_job(queue, job_id)
    if job is None:
        return ApiError(404, f"no job {job_id!r} on queue {queue!r}", field="jobId")
    return ApiError(409, f"job {job_id!r} is {job.get('state')}, not {wanted}", field="jobId")


def run_mutation(action: str, args: dict) -> dict:
    m, queue = manager(), args["queue"]
    result: dict = {"ok": True, "action": action, "queue": queue}
    if action == "retry-failed":
        queues = QUEUE_NAMES if queue == "all" else (queue,)
        per_queue = {q: m.retry_failed(q) for q in queues}
        result.update(count=sum(per_queue.values()), perQueue=per_queue)
    elif action == "retry-job":
        if not m.retry_failed(queue, args["jobId"]):
            raise _job_missing_or_busy(queue, args["jobId"], "failed")
        result.update(jobId=args["jobId"], count=1)
    elif action == "remove-job":
        if not m.remove_job(queue, args["jobId"]):
            raise _job_missing_or_busy(queue, args["jobId"], "waiting, delayed or failed")
        result.update(jobId=args["jobId"], count=1)
    elif action == "retry-jobs":
        result.update(count=m.retry_jobs(queue, args["jobIds"]),
                      selected=len(args["jobIds"]))
    elif action == "remove-jobs":
        result.update(count=m.remove_jobs(queue, args["jobIds"], state="failed"),
                      selected=len(args["jobIds"]))
    elif action == "promote":
        if not m.promote(queue, args["jobId"]):
            raise _job_missing_or_busy(queue, args["jobId"], "delayed")
        result.update(jobId=args["jobId"], count=1)
    elif action == "clear-queue":
        result.update(jobState=args["jobState"], count=m.clear(queue, args["jobState"]))
    elif action == "pause":
        m.pause(queue)
        result.update(paused=True)
    elif action == "resume":
        m.resume(queue)
        result.update(paused=False)
    views().clear()
    return result


def audited_mutation(body) -> dict:
    """Validate, run and audit one mutation; errors are audited and re-raised."""
    action, target = "unknown", {}
    if isinstance(body, dict):
        action = body.get("action") if isinstance(body.get("action"), str) else "unknown"
        target = {k: body[k] for k in ("queue", QUEUE_ALIAS, "jobId", "jobState", "jobIds")
                  if isinstance(body.get(k), str | list)}
        if QUEUE_ALIAS in target:
            target.setdefault("queue", target.pop(QUEUE_ALIAS))
    try:
        action, args = parse_mutation(body)
        result = run_mutation(action, args)
    except ApiError as exc:
        audit.record(action, "rejected" if exc.status < 500 else "error",
                     status=exc.status, target=target, detail=exc.message)
        raise
    except Exception as exc:
        audit.record(action, "error", status=500, target=target,
                     detail=type(exc).__name__)
        raise
    audit.record(action, "ok", status=200, target=target,
                 detail=f"count={result['count']}" if "count" in result else None)
    return result
