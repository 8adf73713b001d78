"""Queue management: counts, pause/resume, clearing, job lookup and the failed set.

Everything here costs a fixed number of Redis round trips per queue (one pipeline for the
counts), never one per job, and never uses KEYS or FLUSHDB: the layout in storage.py lets
each question be answered from a sorted set and a few job hashes.
"""

from __future__ import annotations

import functools
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
# counts.lua's ARGV: the waiting-score band [low, high) of each named priority.
COUNT_BANDS = [bound for p in NAMED_PRIORITIES for bound in priority_band(p)]
SUMMARY_CHARS = 200
MAX_PAGE = 500


def _text(value):
    return value.decode() if isinstance(value, bytes) else value


def _int(value, default=0):
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _history(raw) -> list[dict]:
    try:
        entries = json.loads(raw) if raw else []
    except ValueError:
        return []
    if not isinstance(entries, list):  # Lua's cjson writes an empty list as {}
        return []
    out = []
    for e in entries:
        if isinstance(e, dict):
            out.append({"attempt": e.get("attempt"), "errorType": e.get("errorType"),
                        "error": e.get("error"), "traceback": e.get("traceback"),
                        "at": _iso_ms(e.get("at"))})
    return out


def parse_info(raw) -> dict:
    """INFO's text as {field: value}: counts (digits only) as int, the rest as text, section
    headers ("# Memory") dropped. redis-py's parser also tries floats and nested forms on
    every line, five times the CPU for the few fields an overview shows."""
    out = {}
    for line in _text(raw).split("\r\n"):
        name, sep, value = line.partition(":")
        if sep:
            out[name] = int(value) if value.isdigit() else value
    return out


def _pairs(flat) -> dict:
    """A hash returned from Lua as a flat [name, value, ...] list."""
    return dict(zip(flat[::2], flat[1::2], strict=True))


def _seconds(redis_time) -> float:
    seconds, micros = redis_time
    return seconds + micros / 1e6


def _iso_ms(ms):
    """Milliseconds since the epoch (as Redis keeps them) in ISO 8601, UTC."""
    if ms in (None, b"", ""):
        return None
    try:
        ms = int(ms)
    except ValueError:  # a sorted-set score: "1764567890123.0"
        ms = int(float(ms))
    minute, rest = divmod(ms, 60_000)
    return f"{_minute_text(minute)}{rest // 1000:02d}.{rest % 1000:03d}Z"


@functools.lru_cache(maxsize=4096)
def _minute_text(minute: int) -> str:
    # strftime is most of a timestamp's cost and a page of jobs shows three per job, mostly
    # from a few minutes: the date, hour and minute are formatted once per minute.
    return time.strftime("%Y-%m-%dT%H:%M:", time.gmtime(minute * 60))


class QueueManager:
    """Operator's view of the queues. Thread-safe; one per process is enough."""

    def __init__(self, settings: Settings | None = None, client: redis.Redis | None = None):
        from worker.connections import redis_client

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

    def _count_keys(self, queue: str) -> list[str]:
        """counts.lua's KEYS for `queue`."""
        k = self.keys(queue)
        return [k.waiting, k.delayed, k.active, k.failed, k.paused, k.workers]

    def _queue_commands(self, pipe, queue: str):
        """Queue one counts.lua call for `queue` on `pipe` (its reply: `_queue_counts`)."""
        self.storage(queue)._counts.queue(pipe, self._count_keys(queue), COUNT_BANDS)

    def _run(self, fill) -> list:
        """A pipeline that `fill` queues commands on, counts.lua calls among them."""
        return self.storage(QUEUE_NAMES[0])._counts.pipeline(self.redis, fill)

    @staticmethod
    def _queue_counts(reply) -> dict:
        named = reply[:len(NAMED_PRIORITIES)]
        total, delayed, active, failed, paused, expired, _workers = \
            reply[len(NAMED_PRIORITIES):]
        by_priority = {p.name.lower(): int(n) for p, n in zip(NAMED_PRIORITIES, named,
                                                               strict=True)}
        by_priority["other"] = int(total) - sum(by_priority.values())
        return {"waiting": int(total), "waitingByPriority": by_priority, "delayed": int(delayed),
                "active": int(active), "failed": int(failed), "paused": bool(paused),
                "expiredLeases": int(expired)}

    def counts(self, queue: str) -> dict:
        return self._queue_counts(self._run(lambda pipe: self._queue_commands(pipe, queue))[0])

    def counts_all(self) -> dict[str, dict]:
        """Counts for every queue in one round trip."""
        return self.snapshot(workers=False)[0]

    def snapshot(self, workers: bool = True, info_sections: tuple[str, ...] = ()):
        """(counts per queue, workers, INFO) in one round trip: what an overview shows."""
        fast = self._snapshot_fast(info_sections)
        if fast is not None:
            redis_now, replies, info = fast
        else:  # a cluster: a redis-py pipeline, each counts.lua call in its queue's slot
            def fill(pipe):
                pipe.time()
                for queue in QUEUE_NAMES:
                    self._queue_commands(pipe, queue)  # each reply ends with the heartbeats
                if info_sections:
                    pipe.info(*info_sections)

            redis_now, *replies = self._run(fill)
            info = replies[len(QUEUE_NAMES)] if info_sections else None
            replies = replies[:len(QUEUE_NAMES)]
        counts = {q: self._queue_counts(r) for q, r in zip(QUEUE_NAMES, replies, strict=True)}
        seen = (self._parse_workers([_pairs(r[-1]) for r in replies], _seconds(redis_now))
                if workers else [])
        return counts, seen, info

    def _snapshot_fast(self, info_sections):
        """(Redis' time, counts.lua's reply per queue, INFO parsed or None): TIME, the counts
        and INFO as raw commands on the scripts' own connection (one write). redis-py's
        pipeline and its INFO parser were most of an uncached overview's CPU. None on a
        cluster."""
        calls = [(self._count_keys(queue), COUNT_BANDS) for queue in QUEUE_NAMES]
        commands = [("TIME",), ("INFO", *info_sections)] if info_sections else [("TIME",)]
        replies = self.storage(QUEUE_NAMES[0])._counts.round_trip(commands, calls)
        if replies is None:
            return None
        redis_now = tuple(int(part) for part in replies[0])
        info = parse_info(replies[1]) if info_sections else None
        return redis_now, replies[len(commands):], info

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

    def _describe(self, queue: str, job_id: str, values: list, score=None,
                  summarize: bool = True) -> dict:
        """A job for people: `values` are the job hash's FIELDS (HMGET), or None. Without
        `summarize` the payloadSummary is left to the caller (the admin makes it from the
        redacted payload; a page of 50 paid for every summary twice)."""
        (task, state, prio, enq, deliveries, eta, consumer, leased_at, reason, error_type,
         error, tb, attempts, first_failed, last_failed, msg) = values
        body = peek_job(msg or b"")
        payload = (body.get("args") or [None])[0]
        summary = (json.dumps(payload, separators=(",", ":"))
                   if summarize and payload is not None else "")
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
        """One job with its payload and `history`: its failed attempts, oldest first (at
        most the last five, each with error type, error, traceback and time)."""
        *values, history, attempt = self.redis.hmget(
            self.keys(queue).job(job_id), (*self.FIELDS, "history", "attempt"))
        if values[1] is None:  # no state: no such job
            return None
        job, payload = self._describe(queue, job_id, values)
        job["payload"] = payload
        job["attempt"] = _int(attempt) + 1
        job["history"] = _history(history)
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
        reply = self.storage(queue)._page(
            keys=[zset], args=[k.job_prefix, offset, offset + limit - 1,
                               "1" if newest_first else "0", *self.FIELDS])
        total, rows = reply[0], reply[1:]
        page = [(rows[i], float(rows[i + 1])) for i in range(0, len(rows), 3)]
        jobs = []
        for (job_id, score), values in zip(page, rows[2::3], strict=True):
            if values[1] is not None:
                job, payload = self._describe(queue, _text(job_id), values, score,
                                              summarize=not payloads)
                if state == "waiting":
                    job["priority"] = score_priority(score)
                if payloads:
                    job["payload"] = payload
                jobs.append(job)
        next_offset = offset + len(page)
        return {"jobs": jobs, "total": int(total), "offset": offset, "limit": limit,
                "nextOffset": next_offset if next_offset < int(total) else None}

    # The task is in the message (the hash keeps no copy of it), so filters read both.
    FILTER_FIELDS = ("task", "error_type", "reason", "msg")

    @staticmethod
    def _filter_values(values) -> tuple[str | None, str | None]:
        """(task, error kind) of a job from its FILTER_FIELDS."""
        task, etype, reason, msg = values
        task = _text(task) or (peek_job(msg).get("task") if msg else None)
        return task, _text(etype) or _text(reason)

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
            for index, ((job_id, score), values) in enumerate(
                    zip(page, pipe.execute(), strict=True)):
                found_task, kind = self._filter_values(values)
                if (task is None or found_task == task) and \
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
                job, payload = self._describe(queue, job_id, values, score,
                                              summarize=not payloads)
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
        for values in (pipe.execute() if ids else []):
            t, kind = self._filter_values(values)
            t, kind = t or "?", kind or "?"
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

    def prune_failed(self, queue: str, max_age_seconds: float | None = None,
                     max_count: int | None = None) -> dict[str, int]:
        """Forget failed jobs older than `max_age_seconds`, then the oldest beyond
        `max_count` (defaults: FAILED_RETENTION_DAYS, FAILED_MAX_JOBS); batches of 1000."""
        if max_age_seconds is None:
            max_age_seconds = self.settings.failed_retention_days * 86400
        if max_count is None:
            max_count = self.settings.failed_max_jobs
        storage, total = self.storage(queue), {"age": 0, "count": 0}
        while True:
            by_age, by_count = storage.prune_failed(max_age_seconds, max_count)
            total["age"] += by_age
            total["count"] += by_count
            if by_age < 1000 and by_count < 1000:
                return total

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

    # -- signing keys --------------------------------------------------------------------

    def signing_keys(self, queue: str) -> dict[str, int]:
        """How many jobs (in every state) each signing key id sealed: "v1" for the older
        form without a key id, "unsigned" for anything else. O(jobs)."""
        from worker.hueys import get_huey

        serializer, k = get_huey(queue, self.settings).serializer, self.keys(queue)
        counts: dict[str, int] = {}
        for _job_id, msg in self._messages_of(k, [k.waiting, k.delayed, k.active, k.failed]):
            kid = serializer.key_id(msg) or ("v1" if msg.startswith(b"v1.") else "unsigned")
            counts[kid] = counts.get(kid, 0) + 1
        return counts

    def resign(self, queue: str) -> int:
        """Re-seal with JOB_SIGNING_SECRET every waiting, delayed or failed job sealed with a
        previous secret (the last step of a rotation). A job that moves meanwhile is left as
        it is: its worker re-signs it on a retry. Returns the number re-signed."""
        from worker.hueys import get_huey

        serializer, k = get_huey(queue, self.settings).serializer, self.keys(queue)
        script = self.storage(queue)._resign
        done = 0
        batch: list[tuple[str, bytes, bytes]] = []
        for job_id, msg in self._messages_of(k, [k.waiting, k.delayed, k.failed]):
            resealed = serializer.resign(msg, job_id)
            if resealed is not None:
                batch.append((job_id, msg, resealed))
            if len(batch) == 200:
                done += int(script(keys=[k.job(j) for j, _, _ in batch],
                                   args=[x for _, old, new in batch for x in (old, new)]))
                batch = []
        if batch:
            done += int(script(keys=[k.job(j) for j, _, _ in batch],
                               args=[x for _, old, new in batch for x in (old, new)]))
        return done

    def _messages_of(self, k: QueueKeys, sets: list[str], page: int = 500):
        for zset in sets:
            start = 0
            while True:
                ids = [_text(i) for i in self.redis.zrange(zset, start, start + page - 1)]
                if not ids:
                    break
                pipe = self.redis.pipeline(transaction=False)
                for job_id in ids:
                    pipe.hget(k.job(job_id), "msg")
                for job_id, msg in zip(ids, pipe.execute(), strict=True):
                    if msg is not None:
                        yield job_id, msg
                start += page

    # -- invariants ----------------------------------------------------------------------

    def check_invariants(self, queue: str) -> list[str]:
        """What breaks "a job is in exactly one state set, with its hash, whose state says
        that set": members of two sets, members without a hash, hashes with a wrong or no
        state, hashes in no set (a lost job). Empty when all holds.

        It reads every set and SCANs the job hashes, so it costs O(jobs): for tests at rest
        and for an operator's check of a quiet queue, not for a busy one (jobs move while it
        reads, which shows as false alarms)."""
        k = self.keys(queue)
        sets = {state.value: getattr(k, state.value) for state in JobState}
        members: dict[str, str] = {}
        problems = []
        for state, key in sets.items():
            for raw in self.redis.zrange(key, 0, -1):
                job_id = _text(raw)
                if job_id in members:
                    problems.append(f"{job_id}: in both {members[job_id]} and {state}")
                members[job_id] = state
        pipe = self.redis.pipeline(transaction=False)
        ids = list(members)
        for job_id in ids:
            pipe.hget(k.job(job_id), "state")
        for job_id, state in zip(ids, pipe.execute(), strict=True):
            if state is None:
                problems.append(f"{job_id}: in {members[job_id]} but its hash is gone")
            elif _text(state) != members[job_id]:
                problems.append(f"{job_id}: in {members[job_id]} but its hash says "
                                f"{_text(state)}")
        prefix = k.job_prefix
        for raw in self.redis.scan_iter(match=prefix.replace("[", "\\[") + "*", count=1000):
            job_id = _text(raw)[len(prefix):]
            if job_id not in members:
                state = self.redis.hget(raw, "state")
                if state is not None or self.redis.exists(raw):
                    problems.append(f"{job_id}: a hash (state {_text(state)}) in no state set: "
                                    "a lost job")
        return problems

    # -- workers -------------------------------------------------------------------------

    def workers(self) -> list[dict]:
        """Workers seen through their heartbeats (written every few seconds)."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.time()
        for queue in QUEUE_NAMES:
            pipe.hgetall(self.keys(queue).workers)
        redis_now, *per_queue = pipe.execute()
        return self._parse_workers(per_queue, _seconds(redis_now))

    @staticmethod
    def _parse_workers(per_queue, now: float) -> list[dict]:
        """Heartbeats are stamped on Redis' clock; `now` is Redis' too."""
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
