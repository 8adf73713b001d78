"""The worker runtime: Huey consumers on the reliable storage.

Life of a job in a worker (names follow the job's life, as RQ does):

    lease_task()            Lua: pop by priority, record the lease (storage.lease)
    perform_job()           Huey executes it (retries, timeouts, signals)
    handle_job_success()    settle 'ack'            -> gone
    handle_job_retry()      Huey re-enqueued it; our enqueue script ended the lease
    handle_job_failure()    settle 'fail'           -> failed set with error and traceback
    handle_job_interrupted  settle 'requeue'        -> waiting again at once (shutdown)

A lease keeper thread in every process renews the leases it holds and writes the worker's
heartbeat; the scheduler promotes due delayed jobs, reaps expired leases (one reaper per
queue at a time, by a Redis lock) and fires periodic tasks once per tick across the fleet.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
import traceback
import typing
from dataclasses import dataclass, field

from huey import signals as S
from huey.constants import WORKER_PROCESS, WORKER_THREAD
from huey.consumer import BaseProcess, Consumer, Worker
from huey.exceptions import CancelExecution
from redis.exceptions import (
    AuthenticationError,
    AuthorizationError,
    NoPermissionError,
    RedisError,
)

from worker import __version__
from worker.events import ActiveJob, RuntimeEvents
from worker.hueys import ClarityHuey, RefusedMessage, get_huey
from worker.logs import job_context
from worker.settings import Settings
from worker.storage import PAUSED, Settlement

log = logging.getLogger("clarity.worker")

@dataclass
class RuntimeState:
    """What this process is doing; read by the health server and the heartbeat. It follows
    the runtime's events like any other subscriber."""

    name: str
    queues: list[str]
    concurrency: int
    started_at: float = field(default_factory=time.time)
    processed: int = 0
    failed: int = 0
    retried: int = 0
    consumer_alive: float = field(default_factory=time.monotonic)
    waiting_for_redis: str | None = None  # why, while the worker waits for Redis at start
    active: dict[str, ActiveJob] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def job_started(self, job: ActiveJob):
        with self.lock:
            self.active[job.id] = job

    def job_finished(self, job: ActiveJob, outcome: str, duration: float, wait: float):
        with self.lock:
            self.active.pop(job.id, None)
            if outcome == "completed":
                self.processed += 1
            elif outcome == "failed":
                self.failed += 1
            elif outcome == "retried":
                self.retried += 1


class ClarityWorker(Worker):
    state: RuntimeState = None  # both set by the consumer factory
    events: RuntimeEvents = None

    def initialize(self):
        super().initialize()
        LeaseKeeper.ensure(self.huey, self.state)

    def shutdown(self):
        try:
            released = self.huey.storage.release_unstarted()
            if released:
                log.info("returned %d unstarted job(s) to %s", released, self.huey.queue)
        except RedisError:
            log.warning("could not return unstarted jobs; they come back when their lease "
                        "expires", exc_info=True)
        super().shutdown()

    def loop(self, now=None):
        try:
            task = self.huey.lease_task(block=True)
        except RefusedMessage as refused:
            self.events.bad_message(self.huey.queue, refused.task, refused.reason)
            return
        except RedisError as exc:
            log.warning("cannot lease from %s: %s; retrying in %.1fs", self.huey.queue, exc,
                        self.delay)
            self.sleep()
            return
        if task is PAUSED:
            self.stop_flag.wait(0.5)
            return
        if task is None:
            return
        self.delay = self.default_delay
        self.perform_job(task, now)

    def perform_job(self, task, now=None):
        lease = task.lease
        job = ActiveJob(task.id, self.huey.queue, task.name, time.time(), lease.deliveries)
        wait = max(0.0, job.started - lease.ready_ms / 1000)
        task.outcomes, task.exception = [], None  # filled by ClarityHuey's signal receivers
        self.events.job_started(job)
        with job_context(self.huey.queue, task.id, task.name):
            if lease.deliveries > 1:
                log.warning("redelivery %d of %s %s (an earlier worker died or hung)",
                            lease.deliveries, task.name, task.id)
            try:
                self.huey.execute(task, now)
            except Exception:
                # Huey itself failed (e.g. Redis vanished while requeueing a retry). The
                # lease stays; the reaper redelivers the job when it expires.
                log.exception("error around job %s; it will be redelivered after its lease",
                              task.id)
                self.events.job_finished(job, "error", time.time() - job.started, wait)
                return
            outcome = self.settle_job(task)
        self.events.job_finished(job, outcome, time.time() - job.started, wait)

    def settle_job(self, task) -> str:
        events, exc = task.outcomes, task.exception
        if S.SIGNAL_INTERRUPTED in events:
            return self.handle_job_interrupted(task)
        if S.SIGNAL_RETRYING in events or S.SIGNAL_SCHEDULED in events:
            return self.handle_job_retry(task, events)
        if exc is not None or S.SIGNAL_ERROR in events:
            return self.handle_job_failure(task, exc)
        return self.handle_job_success(task, events)

    def handle_job_success(self, task, events) -> str:
        self._settle(Settlement("ack", task.lease))
        if S.SIGNAL_EXPIRED in events:
            return "expired"
        return "completed"

    def handle_job_retry(self, task, events) -> str:
        # Huey re-enqueued the task (a retry, or rescheduled); the enqueue script ended the
        # lease in the same step, so there is nothing to settle.
        self.huey.storage.forget(task.lease)
        return "retried" if S.SIGNAL_RETRYING in events else "scheduled"

    def handle_job_failure(self, task, exc) -> str:
        reason = "canceled" if isinstance(exc, CancelExecution) else "error"
        tb = "".join(traceback.format_exception(exc)) if exc is not None else ""
        error = (str(exc) or repr(exc)) if exc is not None else "unknown error"
        if isinstance(exc, CancelExecution) and not str(exc):
            error = "the handler gave up (CancelExecution) without retrying"
        log.error("job %s %s failed for good after %d delivery(ies): %s: %s", task.name,
                  task.id, task.lease.deliveries, type(exc).__name__, error)
        self._settle(Settlement("fail", task.lease, reason=reason,
                                error_type=type(exc).__name__ if exc else "Error",
                                error=error, traceback=tb, attempts=self._attempts(task)))
        return "failed"

    def handle_job_interrupted(self, task) -> str:
        log.warning("job %s interrupted by shutdown; returned to the queue", task.id)
        self._settle(Settlement("requeue", task.lease))
        return "interrupted"

    def _attempts(self, task) -> int:
        spec = self.huey.specs.get(task.name)
        configured = spec.retries if spec else 0
        return configured - (task.retries or 0) + 1

    def _settle(self, settlement: Settlement):
        try:
            # Ask for the next job in the same round trip, unless we are stopping.
            self.huey.storage.settle([settlement], fetch=not self.stop_flag.is_set())
        except RedisError:
            log.exception("could not settle job %s (%s); its lease will expire and the reaper "
                          "will redeliver it", settlement.lease.id, settlement.op)


class ClarityScheduler(BaseProcess):
    """Promotes due delayed jobs (4x a second), reaps expired leases, fires periodic tasks."""

    process_name = "Scheduler"
    tick = 0.25

    def __init__(self, huey, stop_flag, events: RuntimeEvents, periodic=True,
                 reap_interval=None):
        super().__init__(huey, stop_flag)
        self.events = events
        self.periodic = periodic
        self.reap_interval = reap_interval or max(0.5, min(5.0, huey.settings.lease_seconds / 4))
        self._next_reap = 0.0
        self._next_periodic = time.monotonic()

    def loop(self, now=None):
        start = time.monotonic()
        storage = self.huey.storage
        try:
            storage.promote_due()
            if start >= self._next_reap:
                self._next_reap = start + self.reap_interval
                self.reap()
            if self.periodic and start >= self._next_periodic:
                self._next_periodic = start + 60 - (time.time() % 60)
                for task in self.huey.read_periodic(None):
                    log.info("enqueueing periodic task %s", task.name)
                    self.huey.enqueue(task)
        except RedisError as exc:
            log.warning("scheduler on %s: %s", self.huey.queue, exc)
        self.sleep_for_interval(start, self.tick)

    def reap(self):
        storage = self.huey.storage
        lock_ms = int(self.reap_interval * 1000)
        if not storage.conn.set(storage.keys.reaper_lock, storage.consumer_id, nx=True,
                                px=lock_ms):
            return
        requeued, abandoned = storage.reap()
        if requeued or abandoned:
            log.warning("reaper on %s: %d expired lease(s) returned to the queue, %d abandoned",
                        self.huey.queue, requeued, abandoned)
            self.events.leases_reaped(self.huey.queue, requeued, abandoned)


class LeaseKeeper:
    """One thread per process: renews held leases and writes the heartbeat."""

    _instances: typing.ClassVar[dict[tuple[int, str], LeaseKeeper]] = {}
    _lock = threading.Lock()

    def __init__(self, huey: ClarityHuey, state: RuntimeState):
        self.huey = huey
        self.state = state
        # Renew well before a lease expires, and beat often enough that the admin's 30 s
        # "alive" window holds whatever the lease length.
        self.interval = min(5.0, max(0.2, huey.settings.lease_seconds / 3))
        self._next_prune = 0.0
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.run, name=f"LeaseKeeper-{huey.queue}",
                                       daemon=True)

    @classmethod
    def ensure(cls, huey, state):
        key = (os.getpid(), huey.queue)
        with cls._lock:
            if key not in cls._instances:
                keeper = cls(huey, state)
                cls._instances[key] = keeper
                keeper.thread.start()
            return cls._instances[key]

    @classmethod
    def stop_all(cls):
        with cls._lock:
            keepers = list(cls._instances.values())
        for keeper in keepers:
            keeper.stopped.set()
            keeper.sign_off()

    @property
    def member(self) -> str:
        return f"{self.state.name}:{os.getpid()}"

    def sign_off(self):
        """Leave the worker list on a clean stop (a dead worker ages out instead)."""
        try:
            self.huey.storage.conn.hdel(self.huey.storage.keys.workers, self.member)
        except RedisError:
            pass

    def run(self):
        storage = self.huey.storage
        while not self.stopped.wait(self.interval):
            try:
                lost = storage.renew()
                if lost:
                    log.warning("lost the lease of %d job(s) on %s (reaped while running: "
                                "they may run twice): %s", len(lost), self.huey.queue,
                                ", ".join(lost))
                self.heartbeat()
            except RedisError as exc:
                log.warning("lease keeper on %s: %s", self.huey.queue, exc)

    def heartbeat(self):
        state = self.state
        with state.lock:
            doc = {"heartbeat": time.time(), "pid": os.getpid(), "host": os.uname().nodename,
                   "concurrency": state.concurrency, "active": len(state.active),
                   "processed": state.processed, "failed": state.failed,
                   "started": state.started_at, "version": __version__}
        storage = self.huey.storage
        storage.conn.hset(storage.keys.workers, self.member, json.dumps(doc))
        if time.monotonic() >= self._next_prune:
            self._next_prune = time.monotonic() + 300
            self.prune_dead_workers()

    def prune_dead_workers(self, older_than: float = 3600):
        """Forget heartbeats of workers gone for an hour (killed, or their host is gone)."""
        conn, key = self.huey.storage.conn, self.huey.storage.keys.workers
        cutoff = time.time() - older_than
        stale = []
        for member, raw in conn.hgetall(key).items():
            try:
                if json.loads(raw).get("heartbeat", 0) < cutoff:
                    stale.append(member)
            except ValueError:
                stale.append(member)
        if stale:
            conn.hdel(key, *stale)


class QueueConsumer(Consumer):
    """Huey's consumer with our worker and scheduler; signals are handled by ClarityRunner."""

    worker_class = ClarityWorker

    def __init__(self, huey, state: RuntimeState, events: RuntimeEvents, **options):
        self.state = state
        self.events = events
        super().__init__(huey, **options)

    def _create_worker(self):
        worker = super()._create_worker()
        worker.state, worker.events = self.state, self.events
        return worker

    def _create_scheduler(self):
        return ClarityScheduler(self.huey, self.stop_flag, self.events, periodic=self.periodic)

    def _set_signal_handlers(self):
        pass  # the runner owns signals for all queues of this process


class ClarityRunner:
    """Runs one consumer per queue in this process and owns the signals.

    SIGINT or SIGTERM: graceful stop (running jobs finish within SHUTDOWN_TIMEOUT, unstarted
    leased jobs go back at once); a second one stops now. SIGHUP: graceful restart.
    """

    def __init__(self, settings: Settings, queues: list[str], concurrency: int, name: str,
                 processes: bool = False, periodic: bool = True,
                 events: RuntimeEvents | None = None):
        if processes and len(queues) > 1:
            raise ValueError("--processes serves one queue per worker process: run one "
                             "clarity-worker@<queue> unit per queue (or drop --processes to "
                             "serve several queues with threads)")
        self.settings = settings
        self.processes = processes
        self.state = RuntimeState(name=name, queues=list(queues), concurrency=concurrency)
        self.events = events or RuntimeEvents()
        self.events.subscribe(self.state)
        self.consumer_id = f"{name}:{os.getpid()}"
        self.consumers: list[QueueConsumer] = []
        for queue in queues:
            huey = get_huey(queue, settings, consumer_id=self.consumer_id)
            self.consumers.append(QueueConsumer(
                huey, self.state, self.events, workers=concurrency, periodic=periodic,
                worker_type=WORKER_PROCESS if processes else WORKER_THREAD,
                initial_delay=0.1, max_delay=5.0, check_worker_health=True,
                health_check_interval=5, shutdown_timeout=settings.shutdown_timeout))
        self._signal = None
        self._stop_now = False
        self._restart = False
        self.stopped = threading.Event()

    def _handle(self, signum, frame):
        if self._signal is not None and signum != signal.SIGHUP:
            self._stop_now = True
            for c in self.consumers:
                c.stop_flag.set()
        self._signal = signum
        self._restart = signum == signal.SIGHUP

    def install_signals(self):
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, self._handle)

    def start(self):
        for c in self.consumers:
            c.start()
            # Keep a keeper in this (parent) process as well: thread workers share it.
            LeaseKeeper.ensure(c.huey, self.state)
        log.info("worker %s started: queues=%s concurrency=%d pid=%d version=%s redis=%s",
                 self.state.name, ",".join(self.state.queues), self.state.concurrency,
                 os.getpid(), __version__, self.settings.redis_display())

    def wait_for_redis(self, max_delay: float = 15.0) -> bool:
        """Until Redis answers: True; False if told to stop meanwhile.

        A worker that starts before Redis (a rack power cycle, where Redis loads its AOF
        slower than the workers boot) waits here with backoff instead of exiting, so a
        start limit never leaves it failed; /health answers 503 with the reason meanwhile.
        A refused password is a configuration error: it raises at once."""
        conn = self.consumers[0].huey.storage.conn
        delay = 0.5
        while self._signal is None:
            try:
                conn.ping()
            except (AuthenticationError, AuthorizationError, NoPermissionError):
                raise
            except (RedisError, OSError) as exc:
                self.state.waiting_for_redis = f"{type(exc).__name__}: {exc}"
                log.warning("Redis at %s does not answer (%s); worker %s waits, next try in "
                            "%.1fs", self.settings.redis_display(),
                            self.state.waiting_for_redis, self.state.name, delay)
                deadline = time.monotonic() + delay
                while self._signal is None and time.monotonic() < deadline:
                    time.sleep(0.1)
                    self.state.consumer_alive = time.monotonic()
                delay = min(max_delay, delay * 2)
                continue
            if self.state.waiting_for_redis is not None:
                log.info("Redis at %s answers; worker %s starts", self.settings.redis_display(),
                         self.state.name)
            self.state.waiting_for_redis = None
            return True
        return False

    def run(self) -> int:
        self.install_signals()
        if not self.wait_for_redis():
            log.info("worker %s stopped before Redis answered", self.state.name)
            return 0
        self.start()
        next_health = time.monotonic() + 5
        while self._signal is None and not self.stopped.is_set():
            time.sleep(0.1)
            self.state.consumer_alive = time.monotonic()
            if time.monotonic() >= next_health:
                next_health = time.monotonic() + 5
                for c in self.consumers:
                    c.check_worker_health()
        self.stop()
        if self._restart:
            log.info("worker %s restarting (SIGHUP)", self.state.name)
            os.execv(sys.executable, [sys.executable, *sys.argv])
        return 0

    def stop(self):
        name = signal.Signals(self._signal).name if self._signal else "stop request"
        log.info("worker %s received %s: stopping gracefully (up to %.0fs for running jobs)",
                 self.state.name, name, self.settings.shutdown_timeout)
        for c in self.consumers:
            c.stop_flag.set()
        for c in self.consumers:
            try:
                c.huey.storage.release_unstarted()
            except RedisError:
                log.warning("could not return unstarted jobs of %s", c.huey.queue)
        deadline = time.monotonic() + self.settings.shutdown_timeout
        for c in self.consumers:
            procs = [p for _, p in c.worker_threads] + [c.scheduler]
            for proc in procs:
                while proc.is_alive() and not self._stop_now and time.monotonic() < deadline:
                    proc.join(0.1)
        # Thread workers report their jobs here; forked workers only show as alive processes.
        still_running = [c for c in self.consumers
                         if any(p.is_alive() for _, p in c.worker_threads)]
        if self.state.active or still_running:
            log.warning("shutdown timeout: %d job(s) still running are returned to the queue",
                        len(self.state.active) or len(still_running))
            for c in self.consumers:
                c._interrupt_workers()
                self._requeue_running(c)
        for c in self.consumers:
            try:  # a worker may have prefetched while we waited
                c.huey.storage.release_unstarted()
            except RedisError:
                pass
        LeaseKeeper.stop_all()
        log.info("worker %s stopped: %d completed, %d failed", self.state.name,
                 self.state.processed, self.state.failed)

    def _requeue_running(self, consumer):
        storage = consumer.huey.storage
        held = [lease for lease in storage.held_leases() if lease.started]
        try:
            storage.settle([Settlement("requeue", lease) for lease in held])
        except RedisError:
            log.warning("could not requeue running jobs; they return when their lease expires")
