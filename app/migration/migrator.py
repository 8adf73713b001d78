"""Moving pending legacy rows into the queues: `clarity migrate run`.

Each batch: claim rows (status "migrating", our name, a deadline), enqueue them with
their priority, due time, job id and idempotency key, then mark them "moved" with the
queue's job id. Exactly once per row, whatever happens:

- two migrators at once: claims never overlap (FOR UPDATE SKIP LOCKED on PostgreSQL,
  BEGIN IMMEDIATE on SQLite);
- a migrator killed after the claim: its rows stay "migrating" until the claim's deadline,
  then any migrator (a racing one, or the next run) claims them again;
- a migrator killed after the enqueue but before "moved": the next claimer enqueues the
  row again with the same idempotency key (the row's own, or `queued_sync:<id>:<created
  µs>` derived from the row alone), the queue answers "seen" with the first job's id, and
  the row is marked moved with that id. Nothing is enqueued twice.

The queue keeps idempotency keys for 7 days: resume a killed migration within that time.

Resumable: a run only ever looks at rows still "pending" (or "migrating" past their
deadline), so running it again continues where the last one stopped. `--dry-run` only
counts what would move.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass, field

import sqlalchemy as sa

from app.db.schema import queued_sync
from app.migration.legacy import LegacyRow, LegacyStore, Status
from app.migration.poller import _future_or_none
from worker.producer import JobError, JobRequest, ValidatedJob, enqueue_many, validate
from worker.registry import load_task_modules
from worker.settings import Settings

log = logging.getLogger("clarity.migrate")


def default_name() -> str:
    return f"migrator@{socket.gethostname()}:{os.getpid()}"


@dataclass
class MigrationReport:
    moved: int = 0
    already_queued: int = 0  # re-enqueued after a crash: the queue had it already
    skipped: int = 0  # rows the queue refuses (bad task, due more than a year ahead)
    by_queue: dict = field(default_factory=dict)
    skipped_rows: list[tuple[int, str]] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class Plan:
    """What a run would move (dry run)."""

    pending: int
    by_queue: dict
    by_priority: dict
    claimed_elsewhere: int


class Migrator:
    def __init__(self, store: LegacyStore, settings: Settings, *, name: str | None = None,
                 batch_size: int = 200, claim_seconds: float = 300.0):
        self.store = store
        self.settings = settings
        self.name = name or default_name()
        self.batch_size = batch_size
        self.claim_seconds = claim_seconds
        load_task_modules(settings.task_modules)

    def plan(self) -> Plan:
        t = queued_sync
        queue = sa.func.coalesce(t.c.queue, "sync")
        with self.store.engine.connect() as conn:
            by_queue = dict(conn.execute(sa.select(queue, sa.func.count())
                                         .where(t.c.status == Status.PENDING)
                                         .group_by(queue)).all())
            by_priority = dict(conn.execute(sa.select(t.c.priority, sa.func.count())
                                            .where(t.c.status == Status.PENDING)
                                            .group_by(t.c.priority)).all())
            migrating = conn.execute(sa.select(sa.func.count())
                                     .where(t.c.status == Status.MIGRATING)).scalar_one()
        return Plan(sum(by_queue.values()), by_queue, by_priority, migrating)

    def remaining(self) -> tuple[int, int]:
        """(pending rows, rows being migrated by someone)."""
        t = queued_sync
        with self.store.engine.connect() as conn:
            rows = dict(conn.execute(sa.select(t.c.status, sa.func.count())
                                     .where(t.c.status.in_([Status.PENDING, Status.MIGRATING]))
                                     .group_by(t.c.status)).all())
        return rows.get(Status.PENDING, 0), rows.get(Status.MIGRATING, 0)

    def migrate_batch(self, report: MigrationReport, skip: set[int]) -> int:
        """Claim and move one batch; returns how many rows were claimed."""
        rows = self.store.claim(self.name, self.batch_size, self.claim_seconds,
                                to_status=Status.MIGRATING, from_statuses=(Status.PENDING,),
                                due_only=False, stale_status=Status.MIGRATING,
                                exclude_ids=frozenset(skip))
        if not rows:
            return 0
        good: list[tuple[LegacyRow, ValidatedJob]] = []
        bad: list[tuple[LegacyRow, str]] = []
        for row in rows:
            req = JobRequest(row.queue, row.task, row.payload, row.priority, None,
                             _future_or_none(row.scheduled_at), row.stable_idempotency_key,
                             row.stable_job_id)
            try:
                good.append((row, validate(req)))
            except JobError as exc:
                bad.append((row, str(exc)))
        if bad:
            # Left to the legacy poller, with the reason; not claimed again in this run.
            for row, why in bad:
                self.store.release([row.id], self.name, error=f"not migrated: {why}")
                skip.add(row.id)
                report.skipped_rows.append((row.id, why))
            report.skipped += len(bad)
        if good:
            # Redis errors propagate: the claimed rows stay "migrating" and are taken again
            # once the claim expires (by this run's retry or the next run).
            done = enqueue_many([job for _row, job in good], settings=self.settings)
            self.store.mark_moved([(row.id, enq.id, job.request.idempotency_key)
                                   for (row, job), enq in zip(good, done, strict=True)],
                                  self.name)
            for (row, _req), enq in zip(good, done, strict=True):
                report.moved += 1
                report.already_queued += 0 if enq.created else 1
                report.by_queue[row.queue] = report.by_queue.get(row.queue, 0) + 1
        return len(rows)

    def run(self, progress=None, wait_for_others: bool = True, poll_seconds: float = 0.5,
            timeout: float | None = None) -> MigrationReport:
        """Move every pending row. Rows other migrators hold are waited for (they finish
        them, or their claim expires and this run takes them) unless `wait_for_others` is
        off. `progress(n)` is called with each batch's size."""
        report = MigrationReport()
        skip: set[int] = set()
        started = time.monotonic()
        while True:
            claimed = self.migrate_batch(report, skip)
            if progress is not None and claimed:
                progress(claimed)
            if claimed:
                continue
            pending, migrating = self.remaining()
            pending -= len(skip)
            if pending <= 0 and (migrating == 0 or not wait_for_others):
                break
            if timeout is not None and time.monotonic() - started > timeout:
                log.warning("%s: stopping after %.0fs with %d rows still held by others",
                            self.name, timeout, migrating)
                break
            time.sleep(poll_seconds)
        report.seconds = time.monotonic() - started
        log.info("%s: moved %d rows (%d already queued by an earlier run), skipped %d in "
                 "%.1fs", self.name, report.moved, report.already_queued, report.skipped,
                 report.seconds)
        return report
