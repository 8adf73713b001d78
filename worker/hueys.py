"""One Huey instance per queue, on the reliable storage, with signed JSON messages."""

from __future__ import annotations

import datetime as dt
import json
import logging
import random
import threading
import time
import traceback

import redis
from huey import Huey
from huey import signals as S
from huey.api import Task
from huey.registry import Registry

from worker import connections
from worker.messages import BadMessage, BadSignature, SignedJSONSerializer, peek_job
from worker.queues import Priority, check_queue
from worker.registry import TaskSpec, load_task_modules, specs_for
from worker.settings import Settings, get_settings
from worker.storage import PAUSED, Lease, ReliableRedisStorage, Settlement, WireJob

log = logging.getLogger("clarity.huey")

MAX_HISTORY_ERROR = 1000  # chars of each failed attempt's error kept on the job
MAX_HISTORY_TB = 4000

# The signals that say how an execution ended; the worker reads them off the task.
OUTCOME_SIGNALS = (S.SIGNAL_COMPLETE, S.SIGNAL_ERROR, S.SIGNAL_RETRYING, S.SIGNAL_CANCELED,
                   S.SIGNAL_INTERRUPTED, S.SIGNAL_EXPIRED, S.SIGNAL_REVOKED, S.SIGNAL_SCHEDULED,
                   S.SIGNAL_LOCKED, S.SIGNAL_TIMEOUT, S.SIGNAL_RATE_LIMITED)


class RefusedMessage(Exception):
    """A leased message that will never run (bad signature, unreadable, unknown task). It is
    already parked in the failed set; `task` is the name it claims, unverified."""

    def __init__(self, job_id: str, task: str, reason: str, error: str):
        super().__init__(f"job {job_id}: {reason}: {error}")
        self.job_id, self.task, self.reason = job_id, task, reason


def _note_outcome(signal, task, *args, **kwargs):
    # Huey emits signals in the thread that runs the task, on the very task object; the
    # worker gives each execution an `outcomes` list before running it.
    outcomes = getattr(task, "outcomes", None)
    if outcomes is not None:
        outcomes.append(signal)


def _note_exception(task, value, exception):
    task.exception = exception


class ShortNameRegistry(Registry):
    """Tasks are known by their short declared name ('ping', 'sync_user'), so that
    producers in other languages can name them."""

    def task_to_string(self, task_class):
        return task_class.__name__


class ClarityHuey(Huey):
    def __init__(self, queue: str, settings: Settings, pool: redis.ConnectionPool,
                 consumer_id: str | None = None):
        self.queue = check_queue(queue)
        self.settings = settings
        super().__init__(
            name=queue, results=False, utc=True,
            serializer=SignedJSONSerializer(settings.signing_secret.get_secret_value(), queue,
                                            settings.previous_signing_secrets),
            storage_class=ReliableRedisStorage, connection_pool=pool,
            prefix=settings.redis_key_prefix, consumer_id=consumer_id,
            lease_seconds=settings.lease_seconds, max_deliveries=settings.max_deliveries,
            wait_replicas=settings.wait_replicas, wait_timeout_ms=settings.redis_wait_timeout_ms)
        self._registry = ShortNameRegistry()
        self.signal(*OUTCOME_SIGNALS)(_note_outcome)
        self.post_execute("clarity-outcome")(_note_exception)
        self.specs: dict[str, TaskSpec] = {}
        for spec in specs_for(queue):
            self._register_spec(spec)

    def _register_spec(self, spec: TaskSpec):
        self.specs[spec.name] = spec
        options = {"name": spec.name, "retries": spec.retries, "retry_delay": spec.retry_delay,
                   "priority": int(spec.priority), "timeout": spec.timeout}
        if spec.periodic:
            self.periodic_task(spec.schedule, name=spec.name, priority=int(spec.priority),
                               timeout=spec.timeout)(_adapt_periodic(spec.func))
        else:
            self.task(**options)(spec.func)

    # -- producing -----------------------------------------------------------------------

    def enqueue_task(self, task: Task, *, delay_ms: int = 0, lease: str = "",
                     history: str = "") -> tuple[bool, str]:
        """One task into the storage; `lease`: the holder's token when it is a retry."""
        job = WireJob(task.id, self.serialize_task(task), task.priority or Priority.NORMAL,
                      0 if delay_ms else eta_ms(task.eta), delay_ms, task.name, None, lease,
                      history)
        return self.storage.enqueue_jobs([job])[0]

    def enqueue(self, task):
        # Huey's own enqueues (periodic runs) come through here.
        if task.expires:
            task.resolve_expires(self.utc)
        self.enqueue_task(task)

    def add_schedule(self, task):
        self.enqueue_task(task)

    def ready_to_run(self, task, timestamp=None):
        # Redis' clock decided the job is due when it left `delayed`; this worker's clock
        # (maybe an hour off) must not send it back, and "run now" must run it now.
        return True

    def retry_delay(self, task) -> float:
        """Seconds before the next attempt: exponential backoff with full jitter (Huey's
        own backoff has no jitter, so a burst of failures would retry in lockstep against a
        struggling provider)."""
        spec = self.specs.get(task.name)
        if spec is None:
            return float(task.retry_delay or 0)
        attempt = max(1, spec.retries - task.retries)
        ceiling = min(spec.retry_max_delay, spec.retry_delay * 2 ** (attempt - 1))
        return random.uniform(ceiling / 2, ceiling)

    def retry_later(self, task, delay: float, error: BaseException | None = None) -> bool:
        """Re-enqueue a running task for another attempt in `delay` seconds (Redis' clock),
        recording the failed attempt. Only its lease holder can: False when the lease was
        lost meanwhile (the job's new holder runs it)."""
        task.retries -= 1
        lease = getattr(task, "lease", None)
        spec = self.specs.get(task.name)
        history = ""
        if error is not None:
            history = json.dumps({
                "attempt": spec.retries - task.retries if spec else None,
                "errorType": type(error).__name__,
                "error": (str(error) or repr(error))[:MAX_HISTORY_ERROR],
                "traceback": "".join(traceback.format_exception(error))[-MAX_HISTORY_TB:],
                "at": int(time.time() * 1000)})
        created, _ = self.enqueue_task(task, delay_ms=max(1, int(delay * 1000)),
                                       lease=lease.token if lease else "", history=history)
        if not created:
            log.warning("retry of %s %s dropped: its lease was lost (the job's current holder "
                        "runs it)", task.name, task.id)
        else:
            log.info("retrying %s %s in %.1fs (%s retries left)", task.name, task.id, delay,
                     task.retries)
        return created

    def _requeue_task(self, task, timestamp, retry_eta=None):
        # Huey calls this for a failed attempt with retries left. `retry_eta` (RetryTask's
        # eta or delay, a rate limit) comes from this worker's clock: passed on as a delay,
        # which Redis turns into a due time on its own clock.
        if retry_eta is not None:
            delay = max(0.0, (retry_eta - timestamp).total_seconds())
        else:
            task.retries -= 1  # retry_delay counts this attempt as spent
            delay = self.retry_delay(task)
            task.retries += 1
        self.retry_later(task, delay, getattr(task, "exception", None))

    # -- consuming -----------------------------------------------------------------------

    def lease_task(self, block=True):
        """The next task with its lease attached as `task.lease`, None, or PAUSED. A message
        that cannot run (bad signature, unreadable, unknown task, or any other reason) is
        parked in the failed set and raises `RefusedMessage`; it never kills the thread."""
        lease = self.storage.lease(block=block)
        if lease is None or lease is PAUSED:
            return lease
        try:
            task = self._registry.create_task(self.serializer.decode_job(
                lease.data, lease.id, lease.priority))
        except Exception as exc:  # noqa: BLE001 - whatever it is, it must not run
            self._refuse(lease, exc)
        task.lease = lease
        return task

    def deserialize_task(self, data: bytes, job_id: str = "", priority: int | None = None):
        # Only the signed job form decodes: never Huey's plain `d` form, which the serializer
        # keeps for its own key-value data.
        return self._registry.create_task(self.serializer.decode_job(data, job_id, priority))

    def _refuse(self, lease: Lease, exc: Exception):
        if not isinstance(exc, BadMessage):
            exc = BadMessage(f"cannot load task: {type(exc).__name__}: {exc}")
        reason = "bad signature" if isinstance(exc, BadSignature) else "bad message"
        log.error("refusing job %s on %s: %s (parked as %r)", lease.id, self.queue, exc, reason)
        try:
            self.storage.settle([Settlement("fail", lease, reason=reason,
                                            error_type=type(exc).__name__, error=str(exc),
                                            attempts=lease.deliveries)])
        finally:
            self.storage.forget(lease)  # parked, or (Redis gone) left to the reaper
        # The name a refused message claims is not verified: only a task of ours may label
        # a metric, so that a forged message cannot mint label values.
        claimed = peek_job(lease.data).get("task")
        raise RefusedMessage(lease.id, claimed if claimed in self.specs else "unknown", reason,
                             str(exc))

    def dequeue(self):
        try:
            task = self.lease_task(block=self.storage.blocking)
        except RefusedMessage:
            return None
        return None if task is PAUSED else task

    # Huey's revoke bookkeeping costs two round trips per job (HMGET before, HDEL after).
    # Our jobs are removed by id instead (QueueManager.remove_job), so revocation is off.
    def is_revoked(self, task, timestamp=None, peek=True):
        return False

    def revoke(self, *args, **kwargs):
        raise NotImplementedError("use QueueManager.remove_job(queue, job_id) instead")

    revoke_all = revoke_by_id = revoke

    def delete(self, key):
        if isinstance(key, str) and key.startswith("r:"):
            return False
        return super().delete(key)

    def read_periodic(self, timestamp):
        # Every consumer's scheduler asks once a minute; only the first to take this
        # minute's lock enqueues, so periodic tasks fire once per tick across the fleet.
        if timestamp is None:
            timestamp = self._get_timestamp()
        tasks = super().read_periodic(timestamp)
        if not tasks:
            return []
        tick = timestamp.strftime("%Y%m%d%H%M")
        if not self.storage.conn.set(self.storage.keys.periodic_lock(tick), "1", nx=True,
                                     ex=180):
            return []
        return tasks


def _adapt_periodic(func):
    def periodic(*args, **kwargs):
        return func({})

    periodic.__name__ = func.__name__
    periodic.__doc__ = func.__doc__
    periodic.__module__ = func.__module__
    return periodic


def eta_ms(eta: dt.datetime | None) -> int:
    if eta is None:
        return 0
    if eta.tzinfo is None:
        eta = eta.replace(tzinfo=dt.UTC)
    return max(int(eta.timestamp() * 1000), 1)


_hueys: dict[tuple[str, str | None, str], ClarityHuey] = {}
_lock = threading.Lock()


def get_huey(queue: str, settings: Settings | None = None,
             consumer_id: str | None = None) -> ClarityHuey:
    """The Huey instance of `queue` (cached per process and configuration)."""
    settings = settings or get_settings()
    key = (queue, consumer_id, settings.huey_key)
    huey = _hueys.get(key)  # one dict read is atomic: the lock guards creation only
    if huey is None:
        load_task_modules(settings.task_modules)
        huey = ClarityHuey(queue, settings, connections.connection_pool(settings), consumer_id)
        with _lock:
            huey = _hueys.setdefault(key, huey)
    return huey


def reset_caches() -> None:
    """Forget cached instances and pools (tests, and after changing settings)."""
    with _lock:
        _hueys.clear()
    connections.reset()
