"""What the admin API and the dashboard do, shared by both: read views and mutations.

Every argument is validated here and a bad one raises `ApiError` naming the field; the
views only parse the HTTP request and pick the caller's identity.
"""

from __future__ import annotations

import base64
import datetime as dt
import threading
import time

import redis
from flask import current_app

from app.admin import audit
from app.admin.errors import ApiError
from worker.management import CLEARABLE_STATES, MAX_PAGE, QueueManager
from worker.queues import QUEUE_NAMES

LIST_STATES = ("waiting", "delayed", "active", "failed")
MUTATIONS = {
    # action: (required fields, optional fields)
    "retry-failed": ({"queue"}, set()),
    "retry-job": ({"queue", "jobId"}, set()),
    "remove-job": ({"queue", "jobId"}, set()),
    "clear-queue": ({"queue", "jobState"}, set()),
    "pause": ({"queue"}, set()),
    "resume": ({"queue"}, set()),
    "promote": ({"queue", "jobId"}, set()),
}
READ_ACTIONS = ("overview", "health", "stats", "failed-jobs", "jobs", "job")


def manager() -> QueueManager:
    return current_app.extensions["clarity_manager"]


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# -- argument checks ---------------------------------------------------------------------

def check_queue(value, *, allow_all: bool = False) -> str:
    if value is None or value == "":
        raise ApiError(400, "queue is required", field="queue")
    if not isinstance(value, str):
        raise ApiError(400, "queue must be a string", field="queue")
    if allow_all and value == "all":
        return value
    if value not in QUEUE_NAMES:
        extra = " or all" if allow_all else ""
        raise ApiError(400, f"unknown queue {value!r}: expected one of "
                            f"{', '.join(QUEUE_NAMES)}{extra}", field="queue")
    return value


def check_job_id(value, field: str = "jobId") -> str:
    if value is None or value == "":
        raise ApiError(400, f"{field} is required", field=field)
    if not isinstance(value, str) or len(value) > 200 or not value.isprintable():
        raise ApiError(400, f"{field} must be a string of 1..200 printable characters",
                       field=field)
    return value


def check_int(value, field: str, low: int, high: int, default: int) -> int:
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ApiError(400, f"{field} must be an integer", field=field) from None
    if not low <= number <= high:
        raise ApiError(400, f"{field} must be between {low} and {high}", field=field)
    return number


def encode_cursor(offset: int) -> str:
    return base64.urlsafe_b64encode(f"o:{offset}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        kind, _, value = raw.partition(":")
        offset = int(value)
        if kind != "o" or offset < 0:
            raise ValueError
        return offset
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "cursor is not one this API returned", field="cursor") from None


def page_args(args) -> tuple[int, int]:
    limit = check_int(args.get("limit"), "limit", 1, MAX_PAGE, 50)
    cursor, offset = args.get("cursor"), args.get("offset")
    if cursor and offset not in (None, ""):
        raise ApiError(400, "give either cursor or offset, not both", field="cursor")
    if cursor:
        return limit, decode_cursor(cursor)
    return limit, check_int(offset, "offset", 0, 10**9, 0)


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
    queue = check_queue(queue)
    return {"queue": queue, "generatedAt": now_iso(), "counts": manager().counts(queue),
            "workers": [w for w in manager().workers() if w.get("queue") == queue]}


def list_jobs(queue: str, state: str, limit: int, offset: int) -> dict:
    queue = check_queue(queue)
    if state in (None, ""):
        raise ApiError(400, "state is required", field="state")
    if state not in LIST_STATES:
        raise ApiError(400, f"state must be one of {', '.join(LIST_STATES)}", field="state")
    page = manager().list_jobs(queue, state, limit, offset)
    page["queue"], page["state"] = queue, state
    page["nextCursor"] = encode_cursor(page["nextOffset"]) if page["nextOffset"] else None
    return page


def get_job(queue: str | None, job_id: str) -> dict:
    job_id = check_job_id(job_id, "id")
    if queue in (None, ""):
        job = manager().find_job(job_id)
    else:
        job = manager().get_job(check_queue(queue), job_id)
    if job is None:
        raise ApiError(404, f"no job {job_id!r}" + (f" on queue {queue!r}" if queue else ""),
                       field="id")
    return job


# -- mutations -----------------------------------------------------------------------------

QUEUE_ALIAS = "queueName"  # the original guide's name for `queue`


def with_queue_alias(body: dict) -> dict:
    """`queueName` (the original guide's spelling) read as `queue`."""
    if QUEUE_ALIAS not in body:
        return body
    body = dict(body)
    alias = body.pop(QUEUE_ALIAS)
    if "queue" in body and body["queue"] != alias:
        raise ApiError(400, "give queue or its alias queueName, not both", field=QUEUE_ALIAS)
    body["queue"] = alias
    return body


def parse_mutation(body) -> tuple[str, dict]:
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object", field="body")
    body = with_queue_alias(body)
    action = body.get("action")
    if action is None:
        raise ApiError(400, "action is required", field="action")
    if not isinstance(action, str) or action not in MUTATIONS:
        raise ApiError(400, f"unknown action {action!r}: expected one of "
                            f"{', '.join(MUTATIONS)}", field="action")
    required, optional = MUTATIONS[action]
    for name in body:
        if name != "action" and name not in required | optional:
            raise ApiError(400, f"unknown field {name!r} for action {action}", field=name)
    for name in sorted(required):
        if body.get(name) in (None, ""):
            raise ApiError(400, f"{name} is required for action {action}", field=name)
    args = {"queue": check_queue(body["queue"], allow_all=action == "retry-failed")}
    if "jobId" in required:
        args["jobId"] = check_job_id(body["jobId"])
    if action == "clear-queue":
        state = body["jobState"]
        if not isinstance(state, str) or state not in CLEARABLE_STATES:
            raise ApiError(400, f"jobState must be one of {', '.join(CLEARABLE_STATES)}",
                           field="jobState")
        args["jobState"] = state
    return action, args


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
        target = {k: body[k] for k in ("queue", QUEUE_ALIAS, "jobId", "jobState")
                  if isinstance(body.get(k), str)}
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
