"""One Huey instance per queue, on the reliable storage, with signed JSON messages."""

from __future__ import annotations

import datetime as dt
import logging
import random
import threading

import redis
from huey import Huey
from huey import signals as S
from huey.api import Task
from huey.exceptions import HueyException
from huey.registry import Registry

from worker.messages import BadMessage, BadSignature, SignedJSONSerializer, peek_job
from worker.queues import Priority, check_queue
from worker.registry import TaskSpec, load_task_modules, specs_for
from worker.settings import Settings, get_settings
from worker.storage import PAUSED, Lease, ReliableRedisStorage, Settlement

log = logging.getLogger("clarity.huey")

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
            serializer=SignedJSONSerializer(settings.signing_secret.get_secret_value(), queue),
            storage_class=ReliableRedisStorage, connection_pool=pool,
            prefix=settings.redis_key_prefix, consumer_id=consumer_id,
            lease_seconds=settings.lease_seconds, max_deliveries=settings.max_deliveries)
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

    def enqueue_tasks(self, tasks: list[Task], idempotency_keys=None) -> list[tuple[bool, str]]:
        idempotency_keys = idempotency_keys or [None] * len(tasks)
        jobs = []
        for task, idem in zip(tasks, idempotency_keys, strict=True):
            jobs.append((task.id, self.serialize_task(task), task.priority or Priority.NORMAL,
                         eta_ms(task.eta), task.name, idem))
        return self.storage.enqueue_jobs(jobs)

    def enqueue(self, task):
        # Every enqueue Huey makes (new jobs, retries, periodic runs) comes through here.
        if task.expires:
            task.resolve_expires(self.utc)
        self.enqueue_tasks([task])

    def add_schedule(self, task):
        self.enqueue_tasks([task])

    def _requeue_task(self, task, timestamp, retry_eta=None):
        # Exponential backoff with full jitter (Huey's own backoff has no jitter, so a burst
        # of failures would retry in lockstep against a struggling provider).
        spec = self.specs.get(task.name)
        task.retries -= 1
        if retry_eta is None and spec is not None:
            attempt = max(1, spec.retries - task.retries)
            ceiling = min(spec.retry_max_delay, spec.retry_delay * 2 ** (attempt - 1))
            delay = random.uniform(ceiling / 2, ceiling)
            retry_eta = timestamp + dt.timedelta(seconds=delay)
        task.eta = retry_eta
        log.info("retrying %s %s (%s retries left) at %s", task.name, task.id, task.retries,
                 task.eta)
        self.enqueue_tasks([task])

    # -- consuming -----------------------------------------------------------------------

    def lease_task(self, block=True):
        """The next task with its lease attached as `task.lease`, None, or PAUSED. A message
        that cannot run is parked in the failed set and raises `RefusedMessage`."""
        lease = self.storage.lease(block=block)
        if lease is None or lease is PAUSED:
            return lease
        try:
            task = self.deserialize_task(lease.data)
        except BadMessage as exc:
            self._park_bad_message(lease, exc)
        except (HueyException, TypeError, ValueError) as exc:  # e.g. an unknown task name
            self._park_bad_message(lease, BadMessage(f"cannot load task: {exc}"))
        task.lease = lease
        return task

    def _park_bad_message(self, lease: Lease, exc: BadMessage):
        reason = "bad signature" if isinstance(exc, BadSignature) else "bad message"
        log.error("refusing job %s on %s: %s (parked as %r)", lease.id, self.queue, exc, reason)
        self.storage.settle([Settlement("fail", lease, reason=reason,
                                        error_type=type(exc).__name__, error=str(exc),
                                        attempts=lease.deliveries)])
        raise RefusedMessage(lease.id, peek_job(lease.data).get("task", "?"), reason, str(exc))

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


_pools: dict[str, redis.ConnectionPool] = {}
_hueys: dict[tuple[str, str | None], ClarityHuey] = {}
_lock = threading.Lock()


def connection_pool(settings: Settings) -> redis.ConnectionPool:
    url = settings.redis_connection_url()
    with _lock:
        pool = _pools.get(url)
        if pool is None:
            pool = redis.ConnectionPool.from_url(
                url, socket_timeout=settings.redis_socket_timeout + 2,
                socket_connect_timeout=settings.redis_socket_timeout,
                max_connections=512)
            _pools[url] = pool
        return pool


def redis_client(settings: Settings | None = None) -> redis.Redis:
    return redis.Redis(connection_pool=connection_pool(settings or get_settings()))


def get_huey(queue: str, settings: Settings | None = None,
             consumer_id: str | None = None) -> ClarityHuey:
    """The Huey instance of `queue` (cached per process)."""
    settings = settings or get_settings()
    key = (queue, consumer_id)
    with _lock:
        huey = _hueys.get(key)
    if huey is None:
        load_task_modules(settings.task_modules)
        huey = ClarityHuey(queue, settings, connection_pool(settings), consumer_id)
        with _lock:
            huey = _hueys.setdefault(key, huey)
    return huey


def reset_caches() -> None:
    """Forget cached instances and pools (tests, and after changing settings)."""
    with _lock:
        _hueys.clear()
        for pool in _pools.values():
            pool.disconnect()
        _pools.clear()
