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

import logging
import threading
import time
import uuid
from dataclasses import dataclass
from typing import NamedTuple

import redis
from huey.storage import PriorityRedisStorage
from redis.exceptions import NoScriptError
from redis.exceptions import TimeoutError as RedisTimeoutError

from worker import scripts
from worker.messages import peek_job
from worker.queues import Priority, QueueKeys

log = logging.getLogger("clarity.storage")

IDEMPOTENCY_TTL = 7 * 24 * 3600  # seconds a caller's idempotency key is remembered
PAUSED = object()
MAX_ERROR_CHARS = 4000
MAX_TRACEBACK_CHARS = 16000


class NotReplicated(RedisTimeoutError):
    """The enqueue ran on the primary, but not enough replicas confirmed it within the wait:
    it is not acknowledged (a failover now could lose it). Callers treat it like a timeout:
    the job may or may not be there, so retry with the same idempotency key."""


class WireJob(NamedTuple):
    """One job as the enqueue script takes it (see worker/lua/enqueue.lua)."""

    id: str
    data: bytes
    priority: int = Priority.NORMAL
    eta_ms: int = 0  # absolute due time (a caller's "at"), Redis' clock judges it
    delay_ms: int = 0  # due this long after Redis' now (a caller's "in N s", a retry)
    task: str = ""
    idempotency_key: str | None = None
    lease: str = ""  # the holder's token: a retry or reschedule of a running job
    history: str = ""  # JSON of the failed attempt a retry records
    idempotency_ttl: float | None = None  # seconds the key is kept (past the due time)


@dataclass
class Lease:
    """One leased job: the raw message and the token that proves we hold it."""

    id: str
    data: bytes
    deliveries: int
    ready_ms: int
    enqueued_ms: int
    consumer: str
    token: str
    priority: int = Priority.NORMAL


@dataclass
class Settlement:
    op: str  # ack | release | return | fail (see lease.lua)
    lease: Lease
    reason: str = ""
    error_type: str = ""
    error: str = ""
    traceback: str = ""
    attempts: int = 0

    def args(self) -> list:
        return [self.op, self.lease.id, self.lease.token, self.reason, self.error_type,
                self.error[:MAX_ERROR_CHARS], self.traceback[-MAX_TRACEBACK_CHARS:],
                self.attempts]


class ReliableRedisStorage(PriorityRedisStorage):
    """At-least-once Huey storage. `lease()` leases one job for the calling thread; `settle()`
    ends leases (and may lease that thread's next job in the same round trip); the leases
    being worked on are renewed by `renew()` until they are settled or forgotten."""

    def __init__(self, name="huey", *, prefix="clarity", consumer_id=None, lease_seconds=30.0,
                 max_deliveries=5, wait_replicas=0, wait_timeout_ms=1000, client=None,
                 **kwargs):
        kwargs.setdefault("blocking", True)
        kwargs.setdefault("read_timeout", 1)
        if client is not None:  # e.g. a RedisCluster: Huey's own set-up only needs a pool
            kwargs["connection_pool"] = redis.ConnectionPool()
        super().__init__(name, clean_name=False, **kwargs)
        if client is not None:
            self.conn = client
        self.keys = k = QueueKeys(prefix, name)
        # An enqueue is acknowledged once this many replicas confirm it (WAIT, same round
        # trip): a failover then cannot lose it.
        self.wait_replicas = wait_replicas
        self.wait_timeout_ms = wait_timeout_ms
        self.queue_key = k.waiting
        self.schedule_key = k.delayed
        self.result_key = k.results
        self.counter_key = k.counters
        self.notify_prefix = k.base + "notify:"
        self.consumer_id = consumer_id or f"{uuid.uuid4().hex[:12]}"
        self.lease_ms = int(lease_seconds * 1000)
        self.max_deliveries = max_deliveries
        self.clock_offset = 0.0  # Redis' clock minus ours, in seconds (from renew)
        self._held: dict[str, Lease] = {}
        self._lock = threading.Lock()
        self._thread = threading.local()  # .next: a lease fetched by this thread's settle
        def load(script):
            return scripts.FastScript(self.conn, scripts.source(script))

        self._enqueue, self._lease, self._renew = load("enqueue"), load("lease"), load("renew")
        self._reap, self._promote, self._remove = load("reap"), load("promote"), load("remove")
        self._move_failed, self._expired = load("move_failed"), load("expired")
        self._prune_failed, self._resign = load("prune_failed"), load("resign")
        self._counts, self._page = load("counts"), load("page")
        self._enqueue_now = load("enqueue_now")

    # -- enqueue -------------------------------------------------------------------------

    def enqueue_jobs(self, jobs, idempotency_ttl=IDEMPOTENCY_TTL, fresh=False):
        """Enqueue jobs in one call; each is a `WireJob` (or a tuple in its field order).
        Returns [(created, job_id)]: with a known idempotency key, the first job's id; not
        created when a job with that id exists, or a retry's lease was lost.
        `fresh`: every id was just generated, so no earlier job exists (saves a lookup)."""
        k = self.keys
        if fresh and len(jobs) == 1 and not self.wait_replicas:
            job = jobs[0] if isinstance(jobs[0], WireJob) else WireJob(*jobs[0])
            if not (job.eta_ms or job.delay_ms or job.idempotency_key or job.lease):
                # The commonest call (a new job, due now) on its short script.
                _created, job_id = self._enqueue_now(
                    keys=(k.waiting, k.seq, k.wake, k.job_prefix + job.id),
                    args=(job.id, job.data, int(job.priority)))
                return [(True, _text(job_id))]
        keys = [k.waiting, k.delayed, k.seq, k.wake, k.active]
        args = []
        fresh_flag = "1" if fresh else "0"
        job_prefix, idem_prefix = k.job_prefix, k.idem_prefix
        for job in jobs:
            job_id, data, priority, eta_ms, delay_ms, _task, idem, lease, history, ttl = \
                WireJob(*job) if not isinstance(job, WireJob) else job
            job_key = job_prefix + job_id
            keys += [job_key, idem_prefix + idem if idem else job_key]
            args += [job_id, data, int(priority), eta_ms or 0, delay_ms or 0,
                     int((ttl or idempotency_ttl) * 1000) if idem else 0, fresh_flag,
                     lease or "", history or ""]
        if self.wait_replicas and any(not getattr(j, "lease", "") for j in jobs):
            flat = self._enqueue_and_wait(keys, args)
        else:
            flat = self._enqueue(keys=keys, args=args)
        return [(bool(flat[i]), _text(flat[i + 1])) for i in range(0, len(flat), 2)]

    def _enqueue_and_wait(self, keys, args):
        # WAIT counts the replicas that have this connection's writes: it must follow the
        # script on the same connection, so both go in one pipeline (one round trip).
        def fill(pipe):
            self._enqueue.queue(pipe, keys, args)
            pipe.execute_command("WAIT", self.wait_replicas, self.wait_timeout_ms)

        flat, acked = self._enqueue.pipeline(self.conn, fill)
        if int(acked) < self.wait_replicas:
            raise NotReplicated(f"enqueue confirmed by {acked} of {self.wait_replicas} "
                                f"replica(s) within {self.wait_timeout_ms} ms: not "
                                "acknowledged (retry with the same idempotency key)")
        return flat

    def enqueue(self, data, priority=None):
        job_id = peek_job(data).get("id") or uuid.uuid4().hex
        self.enqueue_jobs([WireJob(job_id, data, priority or Priority.NORMAL)])

    # -- lease ---------------------------------------------------------------------------

    def lease(self, block: bool = True):
        """The next job for the calling thread as a `Lease`, `None` when there is none (after
        blocking up to read_timeout for a wake token, with `block`), or `PAUSED`."""
        lease = getattr(self._thread, "next", None)
        if lease is not None:
            self._thread.next = None  # fetched by this thread's last settle
            if self.holds(lease):
                return lease
            # renew() found it lost meanwhile (reaped, another consumer has it): never run
            # it here in parallel with its new holder.
            log.warning("dropped job %s fetched earlier: its lease was lost", lease.id)
        if block and getattr(self._thread, "found_empty", False):
            # The settle that ended our last job already looked and found the queue empty:
            # wait for a wake token first instead of asking again.
            self._thread.found_empty = False
            return self._wait_and_lease()
        lease = self._call([], want=True)
        if lease is None and block:
            return self._wait_and_lease()
        return lease

    def lease_batch(self, count: int) -> list[Lease]:
        """Up to `count` leases at once, for bulk tools (a worker leases one per thread)."""
        out = []
        while len(out) < count:
            lease = self._call([], want=True)
            if lease is None or lease is PAUSED:
                break
            out.append(lease)
        return out

    def _lease_call(self, settlements, want: bool) -> tuple[list, list]:
        """KEYS and ARGV of one lease.lua call."""
        k = self.keys
        args = [k.job_prefix, "1" if want else "0", self.lease_ms, self.consumer_id,
                self.max_deliveries]
        for s in settlements:
            args += s.args()
        with self._lock:
            for s in settlements:
                self._held.pop(s.lease.id, None)
        return [k.waiting, k.active, k.failed, k.wake, k.paused], args

    def _call(self, settlements, want: bool):
        """One round trip: settle, then (with `want`) lease one job. Returns the lease, None,
        or PAUSED; the number settled is in `self._thread.settled`."""
        keys, args = self._lease_call(settlements, want)
        return self._leased(self._lease(keys=keys, args=args), want and bool(settlements))

    def _leased(self, result, settled_and_wanted: bool):
        self._thread.settled = int(result[0])
        status = int(result[1])
        if status == -1:
            return PAUSED
        if status == 0:
            self._thread.found_empty = settled_and_wanted
            return None
        lease = Lease(_text(result[2]), result[3], int(result[4]), int(result[5]),
                      int(result[6]), self.consumer_id, _text(result[7]), int(result[8]))
        with self._lock:
            self._held[lease.id] = lease
        return lease

    def _wait_and_lease(self):
        """Idle: block on the wake list, and lease in the same round trip. The lease script
        is pipelined behind BLPOP, and Redis runs a client's queued commands in order, so it
        runs the moment a token arrives (or when the wait times out, finding nothing): a job
        enqueued for an idle worker costs it one round trip, as a plain BZPOPMIN would. A
        token may be stale (another consumer took the job); the lease then finds nothing."""
        keys, args = self._lease_call([], want=True)
        try:
            replies = self._lease.after(("BLPOP", self.keys.wake, self.read_timeout), keys, args)
            if replies is None:  # a cluster client, or the connection failed: redis-py's way
                pipe = self.conn.pipeline(transaction=False)
                pipe.blpop([self.keys.wake], timeout=self.read_timeout)
                self._lease.queue(pipe, keys, args)
                replies = pipe.execute()
        except NoScriptError:  # Redis restarted or failed over: load it, lease next time
            self.conn.script_load(self._lease.script)
            return None
        except RedisTimeoutError:
            return None
        return self._leased(replies[1], False)

    def dequeue(self):
        lease = self.lease(block=self.blocking)
        if lease is None or lease is PAUSED:
            return None
        return lease.data

    def held_leases(self) -> list[Lease]:
        """The leases this process is working on (renewed by `renew`)."""
        with self._lock:
            return list(self._held.values())

    def holds(self, lease: Lease) -> bool:
        with self._lock:
            return self._held.get(lease.id) is lease

    def forget(self, lease: Lease) -> None:
        """Stop renewing `lease`: a retry ended it already, or nobody works on it any more
        (then it expires and the reaper redelivers the job)."""
        with self._lock:
            if self._held.get(lease.id) is lease:
                del self._held[lease.id]

    def settle(self, settlements: list[Settlement], fetch: bool = False) -> int:
        """End these leases; returns how many this process still held in Redis. With `fetch`,
        the same round trip leases the calling thread's next job (its next `lease()` needs
        no round trip)."""
        if not settlements:
            return 0
        lease = self._call(settlements, want=fetch)
        if lease is not None and lease is not PAUSED:
            self._thread.next = lease
        return self._thread.settled

    def release_unstarted(self) -> int:
        """Give back the lease this thread fetched and has not started (graceful stop)."""
        lease = getattr(self._thread, "next", None)
        if lease is None:
            return 0
        self._thread.next = None
        return self.settle([Settlement("release", lease)])

    def renew(self) -> list[str]:
        """Extend every lease this process works on; returns ids whose lease was lost."""
        held = self.held_leases()
        args = [self.lease_ms, self.keys.job_prefix]
        for lease in held:
            args += [lease.id, lease.token]
        sent = time.time()
        result = self._renew(keys=[self.keys.active], args=args)
        # Half the round trip is a fair guess of when Redis read its clock.
        self.clock_offset = int(result[0]) / 1000 - (sent + time.time()) / 2
        lost = [_text(x) for x in result[1:]]
        if lost:
            with self._lock:
                for job_id in lost:
                    self._held.pop(job_id, None)
        return lost

    def expired_leases(self) -> int:
        """Running jobs whose lease has expired by Redis' clock (not reaped yet)."""
        return int(self._expired(keys=[self.keys.active]))

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

    def prune_failed(self, max_age_seconds: float, max_count: int, limit=1000
                     ) -> tuple[int, int]:
        """Failed jobs past the age, then the oldest past the count: (by age, by count)."""
        by_age, by_count = self._prune_failed(
            keys=[self.keys.failed],
            args=[self.keys.job_prefix, int(max_age_seconds * 1000), max_count, limit])
        return int(by_age), int(by_count)

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
