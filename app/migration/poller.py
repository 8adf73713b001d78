"""The legacy scheduler: `clarity legacy run` drains `queued_sync` in-process.

One loop: claim a batch of due rows (see `legacy.LegacyStore.claim`), run each with the
same handler the queue's workers run (`worker.registry.get_spec(queue, task).func`), and
settle it: done; failed (a handler that gives up with `CancelExecution(retry=False)`, or
the last attempt); or pending again at a backoff, with the attempt count and the error.
Several pollers may run at once, on any hosts: claims never overlap, and a crashed
poller's rows are taken over once its claim (LEGACY_CLAIM_SECONDS) has expired, so set
that above the longest job. Delivery is at least once, as on the queue: a poller that
stalls past its claim may see its row run again, and the handlers are idempotent.

Rows the fallback wrote as "fallback_unsure" (the job may already be in Redis) are never
run here: they go back to the queue with their job id and idempotency key once Redis
answers, so the queue runs them exactly once; until then they wait.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import threading
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import redis
from huey.exceptions import CancelExecution, RetryTask

from app.db.schema import utcnow
from app.migration.legacy import LegacyRow, LegacyStore, Origin, Status
from worker.producer import JobError, JobRequest, ValidatedJob, enqueue_many, validate
from worker.registry import get_spec, load_task_modules
from worker.settings import Settings

log = logging.getLogger("clarity.legacy")

UNSURE_BACKOFF = 2.0  # seconds before retrying to hand an unsure row to a down Redis


def default_name() -> str:
    return f"legacy@{socket.gethostname()}:{os.getpid()}"


@dataclass
class PollStats:
    claimed: int = 0
    done: int = 0
    failed: int = 0
    retried: int = 0
    requeued: int = 0
    waiting_for_redis: int = 0
    lost_claims: int = 0
    errors: list[str] = field(default_factory=list)

    def add(self, other: PollStats) -> None:
        for name in ("claimed", "done", "failed", "retried", "requeued", "waiting_for_redis",
                     "lost_claims"):
            setattr(self, name, getattr(self, name) + getattr(other, name))


class LegacyPoller:
    def __init__(self, store: LegacyStore, settings: Settings, *, name: str | None = None,
                 batch_size: int = 50, concurrency: int = 1, claim_seconds: float = 300.0):
        self.store = store
        self.settings = settings
        self.name = name or default_name()
        self.batch_size = batch_size
        self.concurrency = concurrency
        self.claim_seconds = claim_seconds
        self.totals = PollStats()
        load_task_modules(settings.task_modules)
        self._pool = ThreadPoolExecutor(concurrency, thread_name_prefix="legacy") \
            if concurrency > 1 else None

    # -- one round -----------------------------------------------------------------------

    def run_once(self) -> PollStats:
        stats = PollStats()
        rows = self.store.claim(self.name, self.batch_size, self.claim_seconds,
                                to_status=Status.PROCESSING, from_statuses=(Status.PENDING,),
                                due_only=True, stale_status=Status.PROCESSING)
        stats.claimed = len(rows)
        unsure = [r for r in rows if r.origin == Origin.FALLBACK_UNSURE]
        runnable = [r for r in rows if r.origin != Origin.FALLBACK_UNSURE]
        if unsure:
            self._hand_back(unsure, stats)
        if self._pool is not None and len(runnable) > 1:
            for outcome in self._pool.map(self._perform, runnable):
                self._count(stats, outcome)
        else:
            for row in runnable:
                self._count(stats, self._perform(row))
        self.totals.add(stats)
        return stats

    @staticmethod
    def _count(stats: PollStats, outcome: str) -> None:
        setattr(stats, outcome, getattr(stats, outcome) + 1)

    def _hand_back(self, rows: list[LegacyRow], stats: PollStats) -> None:
        """Unsure fallback rows go to the queue under their own id and key: if the first
        attempt reached Redis, the queue says "seen" and adds nothing. A row that is not a
        valid job any more fails alone; the others go."""
        good: list[tuple[LegacyRow, ValidatedJob]] = []
        for r in rows:
            request = JobRequest(r.queue, r.task, r.payload, r.priority, None,
                                 _future_or_none(r.scheduled_at), r.stable_idempotency_key,
                                 r.stable_job_id)
            try:
                good.append((r, validate(request)))
            except JobError as exc:
                self.store.mark_failed(r.id, self.name, r.attempts + 1,
                                       f"cannot hand back to the queue: {exc}")
                stats.failed += 1
        if not good:
            return
        try:
            done = enqueue_many([job for _r, job in good], settings=self.settings)
        except redis.RedisError as exc:
            log.info("%s: Redis still cannot take %d unsure fallback job(s) (%s); "
                     "retrying in %.0fs", self.name, len(good), exc, UNSURE_BACKOFF)
            self.store.release([r.id for r, _job in good], self.name, UNSURE_BACKOFF)
            stats.waiting_for_redis += len(good)
            return
        moved = [(r.id, enq.id, r.stable_idempotency_key) for (r, _job), enq in
                 zip(good, done, strict=True)]
        self.store.mark_moved(moved, self.name)
        stats.requeued += len(good)
        log.info("%s: handed %d fallback job(s) back to the queue", self.name, len(good))

    def _perform(self, row: LegacyRow) -> str:
        """Run one row's handler; settle the row. Returns the outcome's PollStats field."""
        attempts = row.attempts + 1
        try:
            spec = get_spec(row.queue, row.task)
        except ValueError as exc:
            self.store.mark_failed(row.id, self.name, attempts, str(exc))
            return "failed"
        try:
            spec.func(dict(row.payload))
        except CancelExecution as exc:
            if not getattr(exc, "retry", False):
                return self._settle(self.store.mark_failed(row.id, self.name, attempts,
                                                           "canceled by the handler"),
                                    row, "failed")
            return self._retry(row, spec, attempts, "canceled by the handler (retry)")
        except RetryTask as exc:
            return self._retry(row, spec, attempts, f"RetryTask: {exc}")
        except Exception as exc:  # noqa: BLE001 - any handler error is the job's failure
            log.warning("%s: row %s (%s.%s) failed, attempt %d: %s", self.name, row.id,
                        row.queue, row.task, attempts, exc)
            error = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=5)}"
            return self._retry(row, spec, attempts, error)
        return self._settle(self.store.mark_done(row.id, self.name, attempts), row, "done")

    def _retry(self, row: LegacyRow, spec, attempts: int, error: str) -> str:
        if attempts > spec.retries:
            return self._settle(self.store.mark_failed(row.id, self.name, attempts, error),
                                row, "failed")
        delay = min(spec.retry_max_delay, spec.retry_delay * 2 ** (attempts - 1))
        at = utcnow() + dt.timedelta(seconds=delay)
        return self._settle(self.store.retry_later(row.id, self.name, attempts, error, at),
                            row, "retried")

    def _settle(self, updated: int, row: LegacyRow, outcome: str) -> str:
        if not updated:
            # Our claim expired and another poller took the row: it will settle it.
            log.warning("%s: lost the claim on row %s before settling it (%s); raise "
                        "LEGACY_CLAIM_SECONDS above the longest job", self.name, row.id,
                        outcome)
            return "lost_claims"
        return outcome

    # -- the loop ------------------------------------------------------------------------

    def run(self, stop: threading.Event | None = None, idle_seconds: float = 1.0,
            max_rounds: int | None = None) -> PollStats:
        stop = stop or threading.Event()
        log.info("%s: polling queued_sync (batch %d, concurrency %d, claim %.0fs)",
                 self.name, self.batch_size, self.concurrency, self.claim_seconds)
        rounds = 0
        while not stop.is_set():
            try:
                stats = self.run_once()
            except Exception:
                log.exception("%s: poll failed; retrying", self.name)
                stop.wait(idle_seconds)
                continue
            rounds += 1
            if max_rounds is not None and rounds >= max_rounds:
                break
            if stats.claimed < self.batch_size:
                stop.wait(idle_seconds)
        log.info("%s: stopped (done %d, failed %d, retried %d, handed back %d)", self.name,
                 self.totals.done, self.totals.failed, self.totals.retried,
                 self.totals.requeued)
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        return self.totals


def _future_or_none(at: dt.datetime) -> dt.datetime | None:
    """A due time the queue accepts: a future one as is, a past one as "now"."""
    if at.tzinfo is None:
        at = at.replace(tzinfo=dt.UTC)
    return at if at > utcnow() + dt.timedelta(seconds=1) else None
