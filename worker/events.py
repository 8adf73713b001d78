"""What happens in a worker, told to whoever subscribed: one object, handed to the runner.

The runner's own state, the Prometheus metrics and tests subscribe to the same
`RuntimeEvents`; a subscriber implements any of the methods below (the others are skipped).
A subscriber that raises is logged and skipped: bookkeeping never breaks the job path.

With `--processes`, jobs run in forked children and their events fire there; subscribers
that must add up across processes (the metrics) write to shared files for that reason.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

log = logging.getLogger("clarity.events")


@dataclass
class ActiveJob:
    """A job this process is running."""

    id: str
    queue: str
    task: str
    started: float  # time.time()
    deliveries: int
    timeout: float | None = None  # the task's, in seconds
    token: str = ""  # the lease's: one job may run twice at once (a stuck thread's turn)
    task_object: object = field(default=None, repr=False)  # the Huey task (the watchdog's)


class RuntimeEvents:
    def __init__(self, *subscribers):
        self._subscribers: list = list(subscribers)

    def subscribe(self, subscriber) -> None:
        if subscriber not in self._subscribers:
            self._subscribers.append(subscriber)

    def _emit(self, name: str, *args) -> None:
        for subscriber in self._subscribers:
            handler = getattr(subscriber, name, None)
            if handler is None:
                continue
            try:
                handler(*args)
            except Exception:
                log.exception("event subscriber %r failed on %s", subscriber, name)

    def job_started(self, job: ActiveJob) -> None:
        self._emit("job_started", job)

    def job_finished(self, job: ActiveJob, outcome: str, duration: float, wait: float) -> None:
        """`outcome`: completed, failed, retried, scheduled, interrupted, expired, error."""
        self._emit("job_finished", job, outcome, duration, wait)

    def bad_message(self, queue: str, task: str, reason: str) -> None:
        """A message refused and parked (bad signature, unreadable); `task` is unverified."""
        self._emit("bad_message", queue, task, reason)

    def leases_reaped(self, queue: str, requeued: int, abandoned: int) -> None:
        self._emit("leases_reaped", queue, requeued, abandoned)

    def job_timed_out(self, job: ActiveJob, retried: bool) -> None:
        """A thread ran `job` past its timeout: its lease was taken back (retried, or failed
        as `timeout`); the thread itself is stuck until the handler returns."""
        self._emit("job_timed_out", job, retried)

    def keeper_error(self, queue: str, error: str) -> None:
        """The lease keeper hit an error (it goes on)."""
        self._emit("keeper_error", queue, error)
