"""Reliable Redis storage for Huey: leases instead of destructive pops.

Huey's own Redis storages pop a message (BRPOP / BZPOPMIN) and keep no record of it, so a
worker killed mid-job loses the job. Here every job is a hash (`job:<id>`) and its state is
the sorted set that holds its id:

    waiting   score = (10 - priority) * 1e14 + sequence  -> ZPOPMIN gives priority, then FIFO
              (queues.waiting_score; the Lua prelude has the same formula)
    delayed   score = due time (ms)
    active    score = lease deadline (ms); the job hash names the holder and the lease token
    failed    score = last failure time (ms)

Every transition is one Lua script (worker/lua/, loaded by worker/scripts.py), so a crash between two steps cannot
lose or duplicate a job. Redis' own clock (TIME) scores leases, so hosts with skewed clocks
agree on when a lease has expired.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass

from huey.storage import PriorityRedisStorage
from redis.exceptions import TimeoutError as RedisTimeoutError

from worker import scripts
from worker.messages import peek_job
from worker.queues import Priority, QueueKeys

IDEMPOTENCY_TTL = 7 * 24 * 3600
PAUSED = object()


@dataclass
class Lease:
    """One leased job: the raw message and the token that proves we hold it."""

    id: str
    data: bytes
    deliveries: int
    ready_ms: int
    enqueued_ms: int
    consumer: str
    started: bool = False

    @property
    def token(self) -> str:
        return f"{self.consumer}/{self.deliveries}"


@dataclass
class Settlement:
    op: str  # ack | requeue | unstart | fail
    lease: Lease
    reason: str = ""
    error_type: str = ""
    error: str = ""
    traceback: str = ""
    attempts: int = 0

    def args(self) -> list:
        return [self.op, self.lease.id, self.lease.token, self.reason, self.error_type,
                self.error[:4000], self.traceback[-16000:], self.attempts]


class ReliableRedisStorage(PriorityRedisStorage):
    """At-least-once Huey storage. `dequeue()` leases; `settle()` ends a lease."""

    def __init__(self, name="huey", *, prefix="clarity", consumer_id=None, lease_seconds=30.0,
                 max_deliveries=5, max_batch=16, **kwargs):
        kwargs.setdefault("blocking", True)
        kwargs.setdefault("read_timeout", 1)
        super().__init__(name, clean_name=False, **kwargs)
        self.keys = k = QueueKeys(prefix, name)
        self.queue_key = k.waiting
        self.schedule_key = k.delayed
        self.result_key = k.results
        self.counter_key = k.counters
        self.notify_prefix = k.base + "notify:"
        self.consumer_id = consumer_id or f"{uuid.uuid4().hex[:12]}"
        self.lease_ms = int(lease_seconds * 1000)
        self.max_deliveries = max_deliveries
        self.max_batch = max_batch
        self._batch = 1
        self._last_settled = 0
        self._found_empty = False
        self._buffer: deque[Lease] = deque()
        self._held: dict[str, Lease] = {}
        self._lock = threading.Lock()
        reg = self.conn.register_script
        self._enqueue = reg(scripts.source("enqueue"))
        self._lease = reg(scripts.source("lease"))
        self._renew = reg(scripts.source("renew"))
        self._reap = reg(scripts.source("reap"))
        self._promote = reg(scripts.source("promote"))
        self._move_failed = reg(scripts.source("move_failed"))
        self._remove = reg(scripts.source("remove"))

    # -- enqueue -------------------------------------------------------------------------

    def enqueue_jobs(self, jobs, idempotency_ttl=IDEMPOTENCY_TTL, fresh=False):
        """Enqueue [(id, data, priority, eta_ms, task, idempotency_key|None)] in one call.
        Returns [(created, job_id)]: with a known idempotency key, the first job's id.
        `fresh`: every id was just generated, so no earlier state exists (saves a lookup)."""
        k = self.keys
        keys = [k.waiting, k.delayed, k.seq, k.wake, k.active]
        args = [idempotency_ttl, int(time.time() * 1000)]
        fresh_flag = "1" if fresh else "0"
        job_prefix, idem_prefix = k.job_prefix, k.idem_prefix
        for job_id, data, priority, eta_ms, task, idem in jobs:
            job_key = job_prefix + job_id
            keys += [job_key, idem_prefix + idem if idem else job_key]
            args += [job_id, data, int(priority), eta_ms or 0, task, "1" if idem else "0",
                     fresh_flag]
        flat = self._enqueue(keys=keys, args=args)
        return [(bool(flat[i]), _text(flat[i + 1])) for i in range(0, len(flat), 2)]

    def enqueue(self, data, priority=None):
        job_id = peek_job(data).get("id") or uuid.uuid4().hex
        self.enqueue_jobs([(job_id, data, priority or Priority.NORMAL, 0, "", None)])

    # -- lease ---------------------------------------------------------------------------

    def lease(self, block: bool = True):
        """The next job as a `Lease`, `None` when there is none, or `PAUSED`.

        When the last round trip filled its batch the queue is busy, and the next one leases
        twice as many (up to max_batch); otherwise one at a time, so that a high-priority job
        that arrives is not stuck behind a local batch of lower ones."""
        lease = self._pop_buffer()
        if lease is not None:
            return lease
        if block and self._found_empty:
            # The settle that ended our last job already looked and found the queue empty:
            # block for a wake token first instead of asking again.
            self._found_empty = False
            self._wait_for_work()
        status = self._call([], self._batch)
        if status == -1:
            return PAUSED
        lease = self._pop_buffer()
        if lease is None and block:
            self._wait_for_work()
        return lease

    def _pop_buffer(self):
        with self._lock:
            if not self._buffer:
                return None
            lease = self._buffer.popleft()
        lease.started = True
        return lease

    def _call(self, settlements, count) -> int:
        """One round trip: settle, then lease up to `count` into the local buffer. Returns the
        number leased, or -1 when the queue is paused."""
        k = self.keys
        args = [k.job_prefix, count, self.lease_ms, self.consumer_id]
        for s in settlements:
            args += s.args()
        with self._lock:
            for s in settlements:
                self._held.pop(s.lease.id, None)
        result = self._lease(keys=[k.waiting, k.active, k.failed, k.wake, k.paused], args=args)
        self._last_settled = int(result[0])
        status = int(result[1])
        if count == 0 or status == -1:
            return status
        leases = [Lease(_text(result[i]), result[i + 1], int(result[i + 2]),
                        int(result[i + 3]), int(result[i + 4]), self.consumer_id)
                  for i in range(2, len(result), 5)]
        with self._lock:
            self._batch = min(self.max_batch, count * 2) if len(leases) == count else 1
            self._found_empty = not leases and bool(settlements)
            for lease in leases:
                self._held[lease.id] = lease
            self._buffer.extend(leases)
        return status

    def _wait_for_work(self):
        # Idle: block on the wake list rather than polling. A token may be stale (another
        # consumer took the job); then the next lease finds nothing and we block again.
        try:
            self.conn.blpop([self.keys.wake], timeout=self.read_timeout)
        except RedisTimeoutError:
            pass

    def dequeue(self):
        lease = self.lease(block=self.blocking)
        if lease is None or lease is PAUSED:
            return None
        return lease.data

    def held_leases(self) -> list[Lease]:
        with self._lock:
            return list(self._held.values())

    def forget(self, lease: Lease) -> None:
        """Stop tracking a lease that a requeue (retry or reschedule) has already ended."""
        with self._lock:
            self._held.pop(lease.id, None)

    def settle(self, settlements: list[Settlement], fetch: bool = False) -> int:
        """End these leases. With `fetch`, the same round trip leases the next job(s) into the
        local buffer when it is empty, so the next `lease()` needs no round trip."""
        if not settlements:
            return 0
        with self._lock:
            fetch = fetch and not self._buffer
        self._call(settlements, self._batch if fetch else 0)
        return self._last_settled

    def release_unstarted(self) -> int:
        """Give back leased jobs that no worker started (graceful stop)."""
        with self._lock:
            pending = list(self._buffer)
            self._buffer.clear()
        return self.settle([Settlement("unstart", lease) for lease in pending])

    def renew(self) -> list[str]:
        """Extend every lease this process holds; returns ids whose lease was lost."""
        held = self.held_leases()
        if not held:
            return []
        args = [self.lease_ms, self.keys.job_prefix]
        for lease in held:
            args += [lease.id, lease.token]
        lost = [_text(x) for x in self._renew(keys=[self.keys.active], args=args)]
        if lost:
            with self._lock:
                for job_id in lost:
                    self._held.pop(job_id, None)
        return lost

    # -- maintenance ---------------------------------------------------------------------

    def reap(self, limit=1000) -> tuple[int, int]:
        k = self.keys
        requeued, abandoned = self._reap(keys=[k.active, k.waiting, k.failed, k.wake],
                                         args=[self.max_deliveries, limit, k.job_prefix])
        return int(requeued), int(abandoned)

    def promote_due(self, limit=1000, ids=()) -> int:
        k = self.keys
        return int(self._promote(keys=[k.delayed, k.waiting, k.seq, k.wake],
                                 args=[limit, k.job_prefix, *ids]))

    def retry_failed(self, ids=(), limit=1000) -> int:
        k = self.keys
        return int(self._move_failed(keys=[k.failed, k.waiting, k.seq, k.wake],
                                     args=[limit, k.job_prefix, *ids]))

    def remove(self, state: str = "", ids=(), limit=1000) -> int:
        k = self.keys
        return int(self._remove(keys=[k.waiting, k.delayed, k.failed],
                                args=[state, limit, k.job_prefix, *ids]))

    # -- Huey's storage API, over our layout ---------------------------------------------

    def add_to_schedule(self, data, ts):
        # Huey's contract: into the schedule even when already due. (ClarityHuey does not
        # call this: its enqueue script decides between waiting and delayed itself.)
        job_id = peek_job(data).get("id") or uuid.uuid4().hex
        eta_ms = int(self.convert_ts(ts) * 1000)
        pipe = self.conn.pipeline()
        pipe.hset(self.keys.job(job_id), mapping={"msg": data, "prio": int(Priority.NORMAL),
                                                  "state": "delayed", "eta": eta_ms})
        pipe.zadd(self.keys.delayed, {job_id: eta_ms})
        pipe.execute()

    def read_schedule(self, ts):
        # Huey's contract: pop and return what is due. Our consumers never call this: they
        # promote due jobs server-side (promote_due), which cannot drop a job mid-way.
        due_ms = self.convert_ts(ts) * 1000
        ids = self.conn.zrangebyscore(self.keys.delayed, "-inf", due_ms)
        out = []
        for job_id in ids:
            job_id = _text(job_id)
            pipe = self.conn.pipeline()
            pipe.zrem(self.keys.delayed, job_id)
            pipe.hget(self.keys.job(job_id), "msg")
            pipe.delete(self.keys.job(job_id))
            removed, data, _ = pipe.execute()
            if removed and data is not None:
                out.append(data)
        return out

    def _messages(self, zset, start, stop):
        ids = self.conn.zrange(zset, start, stop)
        if not ids:
            return []
        pipe = self.conn.pipeline(transaction=False)
        for job_id in ids:
            pipe.hget(self.keys.job(_text(job_id)), "msg")
        return [m for m in pipe.execute() if m is not None]

    def queue_size(self):
        return self.conn.zcard(self.keys.waiting)

    def enqueued_items(self, limit=None):
        return self._messages(self.keys.waiting, 0, limit - 1 if limit else -1)

    def flush_queue(self):
        while self.remove("waiting", limit=1000):
            pass

    def schedule_size(self):
        return self.conn.zcard(self.keys.delayed)

    def scheduled_items(self, limit=None):
        return self._messages(self.keys.delayed, 0, limit - 1 if limit else -1)

    def flush_schedule(self):
        while self.remove("delayed", limit=1000):
            pass

    def flush_all(self):
        """Remove every job of this queue in every state (tests and `clear`); never KEYS."""
        for state in ("waiting", "delayed", "failed"):
            while self.remove(state, limit=1000):
                pass
        while True:
            ids = self.conn.zrange(self.keys.active, 0, 999)
            if not ids:
                break
            pipe = self.conn.pipeline()
            for job_id in ids:
                pipe.zrem(self.keys.active, job_id)
                pipe.delete(self.keys.job(_text(job_id)))
            pipe.execute()
        self.conn.delete(self.keys.wake, self.keys.paused, self.keys.results,
                         self.keys.counters, self.keys.seq)


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
