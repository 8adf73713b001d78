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

import copy
import datetime as dt
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
from huey.exceptions import CancelExecution, TaskTimeout
from redis.exceptions import (
    AuthenticationError,
    AuthorizationError,
    NoPermissionError,
    RedisError,
)

from worker import __version__
from worker.connections import failure_text
from worker.events import ActiveJob, RuntimeEvents
from worker.hueys import ClarityHuey, RefusedMessage, get_huey
from worker.logs import job_context
from worker.process_id import current_pid
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
    stuck: dict[str, ActiveJob] = field(default_factory=dict)  # threads past a task timeout
    lock: threading.Lock = field(default_factory=threading.Lock)

    def job_started(self, job: ActiveJob):
        with self.lock:
            self.active[job.token or job.id] = job

    def job_finished(self, job: ActiveJob, outcome: str, duration: float, wait: float):
        with self.lock:
            self.active.pop(job.token or job.id, None)
            if self.stuck.pop(job.token or job.id, None) is not None:
                return  # its outcome was settled when the lease was taken back
            if outcome == "completed":
                self.processed += 1
            elif outcome == "failed":
                self.failed += 1
            elif outcome == "retried":
                self.retried += 1


class ClarityWorker(Worker):
    state: RuntimeState = None  # all three set by the consumer factory
    events: RuntimeEvents = None
    enforce_timeouts: bool = False  # thread mode: the lease keeper enforces task timeouts

    def initialize(self):
        super().initialize()
        LeaseKeeper.ensure(self.huey, self.state, self.events, self.enforce_timeouts)

    def shutdown(self):
        try:
            if self.huey.storage.release_unstarted():
                log.info("returned an unstarted job to %s", self.huey.queue)
        except RedisError:
            log.warning("could not return an unstarted job; it comes back when its lease "
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
        spec = self.huey.specs.get(task.name)
        job = ActiveJob(task.id, self.huey.queue, task.name, time.time(), lease.deliveries,
                        timeout=task.timeout or (spec.timeout if spec else None),
                        token=lease.token, task_object=task)
        wait = max(0.0, job.started - lease.ready_ms / 1000)
        task.outcomes, task.exception = [], None  # filled by ClarityHuey's signal receivers
        task.settling = False
        outcome = "error"
        self.events.job_started(job)
        try:
            with job_context(self.huey.queue, task.id, task.name):
                if lease.deliveries > 1:
                    log.warning("redelivery %d of %s %s (an earlier worker died or hung)",
                                lease.deliveries, task.name, task.id)
                try:
                    self.huey.execute(task, now)
                except Exception:
                    # Huey itself failed around the job (e.g. Redis vanished while it
                    # requeued a retry): the job goes back below.
                    log.exception("error around job %s; returning it to the queue", task.id)
                else:
                    outcome = self.settle_job(task)
        finally:
            # Every way out that neither settled the job nor handed it back (an exception
            # anywhere, even one that kills this thread) ends here: a lease nobody works on
            # must not be renewed forever.
            if self.huey.storage.holds(lease):
                self.give_back(task)
            self.events.job_finished(job, outcome, time.time() - job.started, wait)

    def give_back(self, task):
        storage = self.huey.storage
        if task.settling:
            # A settlement was sent and its answer lost: it may have landed. Leave the lease
            # to expire; the reaper redelivers the job if it did not.
            storage.forget(task.lease)
            return
        try:
            storage.settle([Settlement("return", task.lease)])
            log.warning("job %s returned to %s for another delivery", task.id, self.huey.queue)
        except Exception:  # noqa: BLE001 - Redis gone too: the reaper redelivers it
            log.warning("could not return job %s; it is redelivered when its lease expires",
                        task.id)
        finally:
            storage.forget(task.lease)

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
        self._settle(task, Settlement("ack", task.lease))
        if S.SIGNAL_EXPIRED in events:
            return "expired"
        return "completed"

    def handle_job_retry(self, task, events) -> str:
        # Huey re-enqueued the task (ClarityHuey.retry_later); the enqueue script ended the
        # lease in the same step (or refused a lease that was lost), so nothing to settle.
        self.huey.storage.forget(task.lease)
        return "retried" if S.SIGNAL_RETRYING in events else "scheduled"

    def handle_job_failure(self, task, exc) -> str:
        reason = ("canceled" if isinstance(exc, CancelExecution)
                  else "timeout" if isinstance(exc, TaskTimeout) else "error")
        tb = "".join(traceback.format_exception(exc)) if exc is not None else ""
        error = (str(exc) or repr(exc)) if exc is not None else "unknown error"
        if isinstance(exc, CancelExecution) and not str(exc):
            error = "the handler gave up (CancelExecution) without retrying"
        log.error("job %s %s failed for good after %d delivery(ies): %s: %s", task.name,
                  task.id, task.lease.deliveries, type(exc).__name__, error)
        self._settle(task, Settlement("fail", task.lease, reason=reason,
                                      error_type=type(exc).__name__ if exc else "Error",
                                      error=error, traceback=tb,
                                      attempts=self._attempts(task)))
        return "failed"

    def handle_job_interrupted(self, task) -> str:
        log.warning("job %s interrupted by shutdown; returned to the queue", task.id)
        self._settle(task, Settlement("release", task.lease))
        return "interrupted"

    def _attempts(self, task) -> int:
        spec = self.huey.specs.get(task.name)
        configured = spec.retries if spec else 0
        return configured - (task.retries or 0) + 1

    def _settle(self, task, settlement: Settlement):
        task.settling = True
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
                # Ticks follow Redis' clock, like everything that decides when work is due:
                # workers with skewed clocks agree on which minute it is.
                seconds, micros = storage.conn.time()
                redis_now = seconds + micros / 1e6
                self._next_periodic = start + 60 - (redis_now % 60)
                stamp = dt.datetime.fromtimestamp(redis_now, dt.UTC).replace(tzinfo=None)
                for task in self.huey.read_periodic(stamp):
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
    """One thread per process and queue: renews the leases this process works on, writes
    the heartbeat, and (thread mode) takes back the lease of a job that overran its timeout.
    It survives any error: logged, counted (`keeper_error`), and it goes on."""

    _instances: typing.ClassVar[dict[tuple[int, str], LeaseKeeper]] = {}
    _lock = threading.Lock()

    def __init__(self, huey: ClarityHuey, state: RuntimeState, events: RuntimeEvents,
                 enforce_timeouts: bool = False):
        self.huey = huey
        self.state = state
        self.events = events
        self.enforce_timeouts = enforce_timeouts
        # Renew well before a lease expires, and beat often enough that the admin's 30 s
        # "alive" window holds whatever the lease length.
        self.interval = min(5.0, max(0.2, huey.settings.lease_seconds / 3))
        self._next_prune = 0.0
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.run, name=f"LeaseKeeper-{huey.queue}",
                                       daemon=True)

    @classmethod
    def ensure(cls, huey, state, events, enforce_timeouts=False):
        key = (current_pid(), huey.queue)
        with cls._lock:
            if key not in cls._instances:
                keeper = cls(huey, state, events, enforce_timeouts)
                cls._instances[key] = keeper
                keeper.thread.start()
            return cls._instances[key]

    @classmethod
    def stop_all(cls):
        with cls._lock:
            keepers = list(cls._instances.values())
            cls._instances.clear()
        for keeper in keepers:
            keeper.stopped.set()
        for keeper in keepers:
            if keeper.thread is not threading.current_thread():
                keeper.thread.join(10)  # a heartbeat in flight must not land after sign-off
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
        while not self.stopped.wait(self.interval):
            self.tick()

    def tick(self):
        for step in (self.take_back_overrun, self.renew, self.heartbeat):
            try:
                step()
            except Exception as exc:
                log.warning("lease keeper on %s: %s failed: %s: %s", self.huey.queue,
                            step.__name__, type(exc).__name__, exc,
                            exc_info=not isinstance(exc, RedisError))
                self.events.keeper_error(self.huey.queue, type(exc).__name__)

    def renew(self):
        lost = self.huey.storage.renew()
        if lost:
            log.warning("lost the lease of %d job(s) on %s (reaped while running: they may run "
                        "twice): %s", len(lost), self.huey.queue, ", ".join(lost))

    def take_back_overrun(self):
        """Thread mode: a thread cannot be killed, so a job past its task timeout loses its
        lease instead: retried (the task's retries and backoff) or failed as `timeout`,
        while the stuck thread is counted until its handler returns (its late settlement
        is refused by the lease token)."""
        if not self.enforce_timeouts:
            return
        now = time.time()
        with self.state.lock:
            overrun = [j for j in self.state.active.values()
                       if j.queue == self.huey.queue and j.timeout and j.token not in
                       self.state.stuck and now - j.started > j.timeout]
            for job in overrun:
                self.state.stuck[job.token] = job
        for job in overrun:
            self.time_out(job)

    def time_out(self, job: ActiveJob):
        task = copy.copy(job.task_object)
        storage = self.huey.storage
        storage.forget(task.lease)
        error = TaskTimeout(f"ran past its timeout of {job.timeout:g}s (thread still busy)")
        log.error("job %s %s ran past its %gs timeout; its lease is taken back", job.task,
                  job.id, job.timeout)
        retried = False
        if task.retries:
            retried = self.huey.retry_later(task, self.huey.retry_delay(task), error)
        else:
            storage.settle([Settlement("fail", task.lease, reason="timeout",
                                       error_type="TaskTimeout", error=str(error),
                                       attempts=job.deliveries)])
        self.events.job_timed_out(job, retried)

    def heartbeat(self):
        state, offset = self.state, self.huey.storage.clock_offset
        with state.lock:
            # Stamped on Redis' clock (our clock + the offset renew measured), so that the
            # admin, on another host, judges "alive" without trusting either host's clock.
            doc = {"heartbeat": time.time() + offset, "pid": os.getpid(),
                   "host": os.uname().nodename, "concurrency": state.concurrency,
                   "active": len(state.active), "stuck": len(state.stuck),
                   "processed": state.processed, "failed": state.failed,
                   "started": state.started_at + offset, "version": __version__}
        storage = self.huey.storage
        storage.conn.hset(storage.keys.workers, self.member, json.dumps(doc))
        if time.monotonic() >= self._next_prune:
            self._next_prune = time.monotonic() + 300
            self.prune_dead_workers()

    def prune_dead_workers(self, older_than: float = 3600):
        """Forget heartbeats of workers gone for an hour (killed, or their host is gone)."""
        conn, key = self.huey.storage.conn, self.huey.storage.keys.workers
        cutoff = time.time() + self.huey.storage.clock_offset - older_than
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
        # Forked job processes get Huey's own SIGALRM timeout; threads cannot be interrupted,
        # so there the lease keeper takes an overrunning job's lease back instead.
        worker.enforce_timeouts = self.worker_type == WORKER_THREAD
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
        self.state = RuntimeState(name=name, queues=list(queues), concurrency=concurrency,
                                  waiting_for_redis="not connected yet")
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
            LeaseKeeper.ensure(c.huey, self.state, self.events, not self.processes)
        log.info("worker %s started: queues=%s concurrency=%d pid=%d version=%s redis=%s",
                 self.state.name, ",".join(self.state.queues), self.state.concurrency,
                 os.getpid(), __version__, self.settings.redis_display())

    def wait_for_redis(self, max_delay: float = 15.0) -> bool:
        """Until Redis answers: True; False if told to stop meanwhile.

        A worker that starts before Redis (a rack power cycle, where Redis loads its AOF
        slower than the workers boot) waits here with backoff instead of exiting, so a
        start limit never leaves it failed; /health answers 503 with the reason meanwhile.
        A refused password is a configuration error: it raises at once. A refused TLS
        handshake waits too (the certificates may be on their way), its likely cause said."""
        conn = self.consumers[0].huey.storage.conn
        delay = 0.5
        while self._signal is None:
            try:
                conn.ping()
            except (AuthenticationError, AuthorizationError, NoPermissionError):
                raise
            except (RedisError, OSError) as exc:
                self.state.waiting_for_redis = failure_text(exc, self.settings)
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
            c.stop_flag.set()  # a worker thread returns a job it fetched but did not start
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
        LeaseKeeper.stop_all()
        log.info("worker %s stopped: %d completed, %d failed", self.state.name,
                 self.state.processed, self.state.failed)

    def _requeue_running(self, consumer):
        # Back at once, the delivery not charged: a shutdown is no fault of the job's.
        storage = consumer.huey.storage
        try:
            storage.settle([Settlement("release", lease) for lease in storage.held_leases()])
        except RedisError:
            log.warning("could not requeue running jobs; they return when their lease expires")
