"""Database and disk upkeep: prune old logs and events, finished legacy rows, old
side-effect records and temporary files.

Never two at once: a lease lock in the app database (app.db.locks), so it holds across
hosts and even if the periodic tick fired twice. Deletes go in bounded batches so that a
large backlog never holds a long write lock.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import time
from pathlib import Path

import sqlalchemy as sa
from huey import crontab
from sqlalchemy.engine import Engine

from app.db.engine import get_engine
from app.db.locks import LockHeld, db_lock
from app.db.schema import (
    email_log,
    notifications,
    queued_sync,
    side_effects,
    sync_log,
    utcnow,
    webhook_events,
)
from app.jobs.settings import HandlerSettings, get_handler_settings
from worker.management import QueueManager
from worker.queues import QUEUE_NAMES
from worker.registry import periodic_task, task

log = logging.getLogger("clarity.tasks.cleanup")

LOCK_NAME = "cleanup"
LOCK_TTL = dt.timedelta(minutes=30)
LEGACY_FINISHED = ("done", "completed", "failed", "cancelled")


def _delete_batched(engine: Engine, table: sa.Table, condition, batch: int) -> int:
    pk = next(iter(table.primary_key.columns))
    total = 0
    while True:
        with engine.begin() as conn:
            ids = sa.select(pk).where(condition).limit(batch).scalar_subquery()
            deleted = conn.execute(sa.delete(table).where(pk.in_(ids))).rowcount or 0
        total += deleted
        if deleted < batch:
            return total


def _prune_temp(folder: Path, cutoff: float) -> int:
    removed = 0
    if not folder.is_dir():
        return 0
    for root, dirs, files in os.walk(folder, followlinks=False):
        for name in files:
            path = Path(root) / name
            try:
                if path.is_symlink() or not path.is_file():
                    continue
                if path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:  # another process removed it first
                continue
        # Empty subfolders left behind (never the folder itself).
        for name in dirs:
            sub = Path(root) / name
            try:
                if not sub.is_symlink() and not any(sub.iterdir()) \
                        and sub.stat().st_mtime < cutoff:
                    sub.rmdir()
            except OSError:
                continue
    return removed


def run_cleanup(settings: HandlerSettings | None = None, engine: Engine | None = None,
                now: dt.datetime | None = None) -> dict:
    """Prune everything past its retention; returns the count removed per kind."""
    settings = settings or get_handler_settings()
    engine = engine or get_engine(settings)
    now = now or utcnow()
    days = dt.timedelta
    batch = settings.cleanup_batch_size
    started = time.perf_counter()
    counts = {
        "sync_log": _delete_batched(
            engine, sync_log, sync_log.c.created_at < now - days(settings.sync_log_retention_days),
            batch),
        "email_log": _delete_batched(
            engine, email_log,
            sa.and_(email_log.c.created_at < now - days(settings.email_log_retention_days),
                    email_log.c.status.in_(("sent", "failed"))), batch),
        "webhook_events": _delete_batched(
            engine, webhook_events,
            webhook_events.c.received_at < now - days(settings.webhook_retention_days), batch),
        "side_effects": _delete_batched(
            engine, side_effects,
            side_effects.c.created_at < now - days(settings.side_effect_retention_days), batch),
        "queued_sync": _delete_batched(
            engine, queued_sync,
            sa.and_(queued_sync.c.status.in_(LEGACY_FINISHED),
                    queued_sync.c.updated_at < now - days(settings.legacy_retention_days)),
            batch),
        "notifications": _delete_batched(
            engine, notifications,
            sa.and_(notifications.c.read_at.is_not(None),
                    notifications.c.created_at
                    < now - days(settings.notification_retention_days)), batch),
        "temp_files": (_prune_temp(settings.temp_dir,
                                   (now - days(settings.temp_max_age_days)).timestamp())
                       if settings.temp_dir else 0),
    }
    log.info("cleanup removed %s in %.2fs",
             ", ".join(f"{v} {k}" for k, v in counts.items()), time.perf_counter() - started)
    return counts


def cleanup_once(settings: HandlerSettings | None = None, engine: Engine | None = None,
                 now: dt.datetime | None = None) -> dict:
    settings = settings or get_handler_settings()
    engine = engine or get_engine(settings)
    try:
        with db_lock(engine, LOCK_NAME, LOCK_TTL):
            return {"skipped": False, **run_cleanup(settings, engine, now)}
    except LockHeld:
        log.info("cleanup already running elsewhere; skipping this run")
        return {"skipped": True}


def prune_failed_jobs() -> dict[str, dict[str, int]]:
    """The queues' failed sets past FAILED_RETENTION_DAYS or beyond FAILED_MAX_JOBS."""
    manager = QueueManager()
    pruned = {queue: manager.prune_failed(queue) for queue in QUEUE_NAMES}
    if any(sum(n.values()) for n in pruned.values()):
        log.info("pruned failed jobs: %s", pruned)
    return pruned


@periodic_task("cleanup", crontab(minute="17", hour="*/1"), name="cleanup_run")
def cleanup_run(payload: dict) -> dict:
    """Hourly: prune past-retention rows, temp files and old failed jobs, reporting the
    counts.

    Under redelivery: deleting what is past retention is idempotent; a concurrent second
    run (redelivery while the first still runs) finds the lock taken and does nothing."""
    report = cleanup_once()
    report["failed_jobs"] = prune_failed_jobs()
    return report


@task("cleanup", name="cleanup_now", retries=2, retry_delay=60.0)
def cleanup_now(payload: dict) -> dict:
    """Run the cleanup now (operators: `clarity enqueue cleanup cleanup_now`). Same
    guarantees as the hourly run."""
    return cleanup_once()
