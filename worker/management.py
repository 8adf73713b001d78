"""Queue management: counts, pause/resume, clearing, job lookup and the failed set.

Everything here costs a fixed number of Redis round trips per queue (one pipeline for the
counts), never one per job, and never uses KEYS or FLUSHDB: the layout in storage.py lets
each question be answered from a sorted set and a few job hashes.
"""

from __future__ import annotations

import json
import time

import redis

from worker.messages import peek_job
from worker.queues import (
    QUEUE_NAMES,
    JobState,
    Priority,
    QueueKeys,
    check_queue,
    priority_band,
    score_priority,
)
from worker.settings import Settings, get_settings
from worker.storage import ReliableRedisStorage

NAMED_PRIORITIES = [Priority.CRITICAL, Priority.HIGH, Priority.NORMAL, Priority.LOW]
CLEARABLE_STATES = ("waiting", "delayed", "failed")
SUMMARY_CHARS = 200
MAX_PAGE = 500


def _text(value):
    return value.decode() if isinstance(value, bytes) else value


def _int(value, default=0):
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _iso_ms(ms):
    if ms in (None, b"", ""):
        return None
    ms = int(float(ms))
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms / 1000)) + f".{ms % 1000:03d}Z"


class QueueManager:
    """Operator's view of the queues. Thread-safe; one per process is enough."""

    def __init__(self, settings: Settings | None = None, client: redis.Redis | None = None):
        from worker.hueys import redis_client

        self.settings = settings or get_settings()
        self.redis = client or redis_client(self.settings)
        self._storages: dict[str, ReliableRedisStorage] = {}

    def keys(self, queue: str) -> QueueKeys:
        return QueueKeys(self.settings.redis_key_prefix, check_queue(queue))

    def storage(self, queue: str) -> ReliableRedisStorage:
        storage = self._storages.get(queue)
        if storage is None:
            storage = ReliableRedisStorage(check_queue(queue), prefix=self.settings.redis_key_prefix,
                                           connection_pool=self.redis.connection_pool,
                                           max_deliveries=self.settings.max_deliveries)
            self._storages[queue] = storage
        return storage

    # -- counts --------------------------------------------------------------------------

    def _queue_commands(self, pipe, queue: str):
        k = self.keys(queue)
        for p in NAMED_PRIORITIES:
            low, high = priority_band(p)
            pipe.zcount(k.waiting, low, f"({high}")
        pipe.zcard(k.waiting)
        pipe.zcard(k.delayed)
        pipe.zcard(k.active)
        pipe.zcard(k.failed)
        pipe.exists(k.paused)
        pipe.zcount(k.active, "-inf", int(time.time() * 1000))

    @staticmethod
    def _queue_counts(values) -> dict:
        named = values[:len(NAMED_PRIORITIES)]
        total, delayed, active, failed, paused, expired = values[len(NAMED_PRIORITIES):]
        by_priority = {p.name.lower(): int(n) for p, n in zip(NAMED_PRIORITIES, named,
                                                               strict=True)}
        by_priority["other"] = int(total) - sum(by_priority.values())
        return {"waiting": int(total), "waitingByPriority": by_priority, "delayed": int(delayed),
                "active": int(active), "failed": int(failed), "paused": bool(paused),
                "expiredLeases": int(expired)}

    def counts(self, queue: str) -> dict:
        pipe = self.redis.pipeline(transaction=False)
        self._queue_commands(pipe, queue)
        return self._queue_counts(pipe.execute())

    def counts_all(self) -> dict[str, dict]:
        """Counts for every queue in one round trip."""
        return self.snapshot(workers=False)[0]

    def snapshot(self, workers: bool = True, info_sections: tuple[str, ...] = ()):
        """(counts per queue, workers, INFO) in one round trip: what an overview shows."""
        pipe = self.redis.pipeline(transaction=False)
        for queue in QUEUE_NAMES:
            self._queue_commands(pipe, queue)
        if workers:
            for queue in QUEUE_NAMES:
                pipe.hgetall(self.keys(queue).workers)
        if info_sections:
            pipe.info(*info_sections)
        values = pipe.execute()
        width = (len(values) - (len(QUEUE_NAMES) if workers else 0)
                 - (1 if info_sections else 0)) // len(QUEUE_NAMES)
        counts = {q: self._queue_counts(values[i * width:(i + 1) * width])
                  for i, q in enumerate(QUEUE_NAMES)}
        rest = values[width * len(QUEUE_NAMES):]
        seen = self._parse_workers(rest[:len(QUEUE_NAMES)]) if workers else []
        info = rest[-1] if info_sections else None
        return counts, seen, info

    # -- pause / resume / clear ----------------------------------------------------------

    def pause(self, queue: str) -> None:
        """No new jobs start; running ones finish."""
        self.redis.set(self.keys(queue).paused, str(int(time.time())))

    def resume(self, queue: str) -> None:
        k = self.keys(queue)
        pipe = self.redis.pipeline()
        pipe.delete(k.paused)
        pipe.rpush(k.wake, *([1] * 16))
        pipe.ltrim(k.wake, -256, -1)
        pipe.execute()

    def is_paused(self, queue: str) -> bool:
        return bool(self.redis.exists(self.keys(queue).paused))

    def clear(self, queue: str, state: str) -> int:
        """Remove every job in `state` (waiting, delayed or failed), in batches."""
        if state not in CLEARABLE_STATES:
            raise ValueError(f"state must be one of {', '.join(CLEARABLE_STATES)}")
        storage, removed = self.storage(queue), 0
        while True:
            n = storage.remove(state, limit=1000)
            removed += n
            if not n:
                return removed

    # -- jobs ----------------------------------------------------------------------------

    # The job hash fields a description reads, in HMGET order.
    FIELDS = ("task", "state", "prio", "enq", "deliveries", "eta", "consumer", "leased_at",
              "reason", "error_type", "error", "traceback", "attempts", "first_failed",
              "last_failed", "msg")

    def _describe(self, queue: str, job_id: str, values: list, score=None) -> dict:
        """A job for people: `values` are the job hash's FIELDS (HMGET), or None."""
        (task, state, prio, enq, deliveries, eta, consumer, leased_at, reason, error_type,
         error, tb, attempts, first_failed, last_failed, msg) = values
        body = peek_job(msg or b"")
        payload = (body.get("args") or [None])[0]
        summary = json.dumps(payload, separators=(",", ":")) if payload is not None else ""
        state = _text(state)
        job = {
            "id": job_id, "queue": queue, "task": _text(task) or body.get("task"),
            "state": state, "priority": _int(prio, Priority.NORMAL),
            "payloadSummary": summary[:SUMMARY_CHARS] + ("…" if len(summary) > SUMMARY_CHARS
                                                         else ""),
            "enqueuedAt": _iso_ms(enq), "deliveries": _int(deliveries),
            "retriesLeft": body.get("retries"),
        }
        if state == "delayed":
            job["runAt"] = _iso_ms(eta)
        elif state == "active":
            job["consumer"] = _text(consumer)
            job["startedAt"] = _iso_ms(leased_at)
            job["leaseDeadline"] = _iso_ms(score) if score is not None else None
        elif state == "failed":
            job.update({
                "reason": _text(reason), "errorType": _text(error_type),
                "error": _text(error), "traceback": _text(tb), "attempts": _int(attempts),
                "firstFailedAt": _iso_ms(first_failed), "lastFailedAt": _iso_ms(last_failed),
            })
        return job, payload

    def get_job(self, queue: str, job_id: str) -> dict | None:
        values = self.redis.hmget(self.keys(queue).job(job_id), self.FIELDS)
        if values[1] is None:  # no state: no such job
            return None
        job, payload = self._describe(queue, job_id, values)
        job["payload"] = payload
        return job

    def find_job(self, job_id: str) -> dict | None:
        """Look a job up by id in every queue (one pipeline)."""
        pipe = self.redis.pipeline(transaction=False)
        for queue in QUEUE_NAMES:
            pipe.exists(self.keys(queue).job(job_id))
        for queue, exists in zip(QUEUE_NAMES, pipe.execute(), strict=True):
            if exists:
                return self.get_job(queue, job_id)
        return None

    def _state_zset(self, queue: str, state: str) -> str:
        k = self.keys(queue)
        try:
            return {JobState.WAITING: k.waiting, JobState.DELAYED: k.delayed,
                    JobState.ACTIVE: k.active, JobState.FAILED: k.failed}[JobState(state)]
        except ValueError:
            raise ValueError("state must be one of waiting, delayed, active, failed") from None

    def list_jobs(self, queue: str, state: str, limit: int = 50, offset: int = 0,
                  payloads: bool = False) -> dict:
        """A page of jobs in `state`. Waiting: next to run first; delayed: soonest first;
        active: oldest lease first; failed: newest failure first. `payloads`: each job
        also carries its full `payload` (the admin redacts it before showing it)."""
        k = self.keys(queue)
        zset = self._state_zset(queue, state)
        limit = max(1, min(int(limit), MAX_PAGE))
        offset = max(0, int(offset))
        newest_first = state == "failed"
        pipe = self.redis.pipeline(transaction=False)
        pipe.zcard(zset)
        (pipe.zrevrange if newest_first else pipe.zrange)(zset, offset, offset + limit - 1,
                                                          withscores=True)
        total, page = pipe.execute()
        pipe = self.redis.pipeline(transaction=False)
        for job_id, _ in page:
            pipe.hmget(k.job(_text(job_id)), self.FIELDS)
        jobs = []
        for (job_id, score), values in zip(page, pipe.execute(), strict=True):
            if values[1] is not None:
                job, payload = self._describe(queue, _text(job_id), values, score)
                if state == "waiting":
                    job["priority"] = score_priority(score)
                if payloads:
                    job["payload"] = payload
                jobs.append(job)
        next_offset = offset + len(page)
        return {"jobs": jobs, "total": int(total), "offset": offset, "limit": limit,
                "nextOffset": next_offset if next_offset < int(total) else None}

    FILTER_FIELDS = ("task", "error_type", "reason")

    def find_jobs(self, queue: str, state: str, *, task: str | None = None,
                  error_type: str | None = None, start: int = 0, limit: int = 50,
                  scan: int = 5000, payloads: bool = False) -> dict:
        """Jobs in `state` whose task and error type match, in list_jobs' order, from
        position `start` of the state set. Reads at most `scan` ids per call (in pipelined
        batches of 500), so a rare match in a huge failed set costs a bounded call;
        `nextStart` continues where it stopped (None at the end). `errorType` matches the
        exception class, or the reason for jobs without one (`abandoned`, `bad signature`)."""
        zset = self._state_zset(queue, state)
        k = self.keys(queue)
        limit = max(1, min(int(limit), MAX_PAGE))
        newest_first = state == "failed"
        total = int(self.redis.zcard(zset))
        position, end = max(0, int(start)), max(0, int(start)) + max(1, int(scan))
        matches: list[tuple[str, float]] = []
        while position < min(end, total) and len(matches) < limit:
            stop = min(position + 500, end, total) - 1
            page = (self.redis.zrevrange if newest_first else self.redis.zrange)(
                zset, position, stop, withscores=True)
            if not page:
                break
            pipe = self.redis.pipeline(transaction=False)
            for job_id, _ in page:
                pipe.hmget(k.job(_text(job_id)), self.FILTER_FIELDS)
            for index, ((job_id, score), (t, etype, reason)) in enumerate(
                    zip(page, pipe.execute(), strict=True)):
                kind = _text(etype) or _text(reason)
                if (task is None or _text(t) == task) and \
                        (error_type is None or kind == error_type):
                    matches.append((_text(job_id), score))
                    if len(matches) == limit:
                        position += index + 1
                        break
            else:
                position += len(page)
        pipe = self.redis.pipeline(transaction=False)
        for job_id, _ in matches:
            pipe.hmget(k.job(job_id), self.FIELDS)
        jobs = []
        for (job_id, score), values in zip(matches, pipe.execute(), strict=True):
            if values[1] is not None:
                job, payload = self._describe(queue, job_id, values, score)
                if state == "waiting":
                    job["priority"] = score_priority(score)
                if payloads:
                    job["payload"] = payload
                jobs.append(job)
        return {"jobs": jobs, "total": total, "start": int(start), "limit": limit,
                "nextStart": position if position < total else None}

    def failed_facets(self, queue: str, sample: int = 2000) -> dict:
        """How many of the newest `sample` failed jobs each task and error type has: what
        the failed list's filters offer."""
        k = self.keys(queue)
        ids = self.redis.zrevrange(k.failed, 0, max(0, sample - 1))
        pipe = self.redis.pipeline(transaction=False)
        for job_id in ids:
            pipe.hmget(k.job(_text(job_id)), self.FILTER_FIELDS)
        tasks: dict[str, int] = {}
        kinds: dict[str, int] = {}
        for t, etype, reason in (pipe.execute() if ids else []):
            t, kind = _text(t) or "?", _text(etype) or _text(reason) or "?"
            tasks[t] = tasks.get(t, 0) + 1
            kinds[kind] = kinds.get(kind, 0) + 1
        return {"sampled": len(ids), "tasks": dict(sorted(tasks.items())),
                "errorTypes": dict(sorted(kinds.items()))}

    # Job hash fields the job page shows besides the description's.
    DETAIL_FIELDS = ("leased_at", "consumer", "attempt", "ready", "first_failed",
                     "last_failed", "lease")

    def job_detail(self, queue: str, job_id: str) -> dict | None:
        """get_job() plus the times and holder a job page shows."""
        job = self.get_job(queue, job_id)
        if job is None:
            return None
        (leased_at, consumer, attempt, ready, first_failed, last_failed,
         lease) = self.redis.hmget(self.keys(queue).job(job_id), self.DETAIL_FIELDS)
        job.setdefault("startedAt", _iso_ms(leased_at))
        job.setdefault("consumer", _text(consumer))
        job.setdefault("readyAt", _iso_ms(ready))
        job.setdefault("attempt", _int(attempt) + 1)
        job.setdefault("firstFailedAt", _iso_ms(first_failed))
        job.setdefault("lastFailedAt", _iso_ms(last_failed))
        job["leaseHolder"] = _text(lease) if job.get("state") == "active" else None
        if job.get("state") == "active" and not job.get("leaseDeadline"):
            job["leaseDeadline"] = _iso_ms(self.redis.zscore(self.keys(queue).active, job_id))
        return job

    def retry_jobs(self, queue: str, ids: list[str]) -> int:
        """Move the failed jobs among `ids` back to waiting; returns how many moved."""
        return self.storage(queue).retry_failed(ids=list(ids)) if ids else 0

    def remove_jobs(self, queue: str, ids: list[str], state: str = "") -> int:
        """Remove the jobs among `ids` that are not running (only those in `state`, one of
        CLEARABLE_STATES, when given); returns how many."""
        if state and state not in CLEARABLE_STATES:
            raise ValueError(f"state must be one of {', '.join(CLEARABLE_STATES)}")
        return self.storage(queue).remove(state, ids=list(ids)) if ids else 0

    def list_failed(self, queue: str, limit: int = 50, offset: int = 0) -> dict:
        return self.list_jobs(queue, "failed", limit, offset)

    def retry_failed(self, queue: str, job_id: str | None = None) -> int:
        """Move one failed job (or all of them) back to the waiting set."""
        storage = self.storage(queue)
        if job_id is not None:
            return storage.retry_failed(ids=[job_id])
        moved = 0
        while True:
            n = storage.retry_failed(limit=1000)
            moved += n
            if not n:
                return moved

    def remove_job(self, queue: str, job_id: str) -> bool:
        """Remove a job that is not running (waiting, delayed or failed)."""
        return self.storage(queue).remove("", ids=[job_id]) > 0

    def promote(self, queue: str, job_id: str) -> bool:
        """Run a delayed job now."""
        return self.storage(queue).promote_due(ids=[job_id]) > 0

    # -- workers -------------------------------------------------------------------------

    def workers(self) -> list[dict]:
        """Workers seen through their heartbeats (written every few seconds)."""
        pipe = self.redis.pipeline(transaction=False)
        for queue in QUEUE_NAMES:
            pipe.hgetall(self.keys(queue).workers)
        return self._parse_workers(pipe.execute())

    @staticmethod
    def _parse_workers(per_queue) -> list[dict]:
        now = time.time()
        out = []
        for queue, entries in zip(QUEUE_NAMES, per_queue, strict=True):
            for name, raw in entries.items():
                try:
                    info = json.loads(raw)
                except ValueError:
                    continue
                info.update(queue=queue, name=_text(name))
                info["secondsSinceHeartbeat"] = round(now - info.get("heartbeat", 0), 1)
                info["alive"] = info["secondsSinceHeartbeat"] < 30
                out.append(info)
        return out
