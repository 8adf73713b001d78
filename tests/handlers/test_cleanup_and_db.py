"""Cleanup retention, its lock, and the migrations."""

from __future__ import annotations

import datetime as dt
import os

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from click.testing import CliRunner

from app.db import migrate
from app.db.cli import db as db_cli
from app.db.locks import acquire
from app.db.schema import email_log, metadata, queued_sync, sync_log, webhook_events
from app.jobs.cleanup import cleanup_once

NOW = dt.datetime(2026, 11, 28, 12, tzinfo=dt.UTC)


def count(engine, table):
    with engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(table)).scalar()


def test_cleanup_removes_exactly_what_is_past_retention(db, handler_env, tmp_path):
    temp = tmp_path / "tmp"
    (temp / "sub").mkdir(parents=True)
    old_file, new_file = temp / "old.csv", temp / "sub" / "new.csv"
    old_file.write_text("x")
    new_file.write_text("y")
    # File ages come from NOW, the same clock cleanup_once is given: never the wall clock.
    for path, age_days in ((old_file, 8), (new_file, 1)):
        stamp = (NOW - dt.timedelta(days=age_days)).timestamp()
        os.utime(path, (stamp, stamp))
    handler_env(temp_dir=temp, temp_max_age_days=7, sync_log_retention_days=90,
                email_log_retention_days=90, webhook_retention_days=30, legacy_retention_days=7,
                cleanup_batch_size=2)
    day = dt.timedelta(days=1)
    with db.begin() as conn:
        conn.execute(sync_log.insert(), [
            {"user_id": 1, "sync_type": "MANUAL", "status": "success",
             "created_at": NOW - 91 * day} for _ in range(5)] + [
            {"user_id": 1, "sync_type": "MANUAL", "status": "success",
             "created_at": NOW - 89 * day}])
        conn.execute(email_log.insert(), [
            {"idempotency_key": "a", "template": "welcome", "to_address": "a@x",
             "status": "sent", "created_at": NOW - 91 * day},
            {"idempotency_key": "b", "template": "welcome", "to_address": "a@x",
             "status": "retry", "created_at": NOW - 91 * day},  # still in flight: kept
            {"idempotency_key": "c", "template": "welcome", "to_address": "a@x",
             "status": "sent", "created_at": NOW - 10 * day}])
        conn.execute(webhook_events.insert(), [
            {"provider": "yodlee", "event_id": "1", "event_type": "X", "status": "processed",
             "received_at": NOW - 31 * day},
            {"provider": "yodlee", "event_id": "2", "event_type": "X", "status": "processed",
             "received_at": NOW - 29 * day}])
        conn.execute(queued_sync.insert(), [
            {"user_id": 1, "status": "done", "updated_at": NOW - 8 * day},
            {"user_id": 2, "status": "pending", "updated_at": NOW - 30 * day},
            {"user_id": 3, "status": "done", "updated_at": NOW - 6 * day}])
    report = cleanup_once(now=NOW)
    assert report == {"skipped": False, "sync_log": 5, "email_log": 1, "webhook_events": 1,
                      "side_effects": 0, "queued_sync": 1, "notifications": 0, "temp_files": 1}
    assert count(db, sync_log) == 1 and count(db, email_log) == 2
    assert count(db, webhook_events) == 1 and count(db, queued_sync) == 2
    assert not old_file.exists() and new_file.exists()
    assert cleanup_once(now=NOW)["sync_log"] == 0  # a second run finds nothing


def test_cleanup_never_runs_twice_at_once(db):
    holder = acquire(db, "cleanup", dt.timedelta(minutes=5))
    assert holder is not None
    assert acquire(db, "cleanup", dt.timedelta(minutes=5)) is None
    assert cleanup_once(now=NOW) == {"skipped": True}


def test_an_expired_lock_is_taken_over(db):
    assert acquire(db, "cleanup", dt.timedelta(seconds=-1)) is not None
    assert acquire(db, "cleanup", dt.timedelta(minutes=5)) is not None


def test_migrations_create_exactly_the_schema(db):
    with db.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diff == []
    assert migrate.current_revision(db) == migrate.head_revision()
    indexes = {i["name"] for t in ("sync_log", "email_log", "queued_sync")
               for i in sa.inspect(db).get_indexes(t)}
    assert {"ix_sync_log_status_created_at", "ix_email_log_status_created_at",
            "ix_queued_sync_scheduled_at"} <= indexes


def test_db_cli_upgrades_a_fresh_sqlite_database(handler_env, tmp_path):
    handler_env(database_url=f"sqlite:///{tmp_path / 'cli.db'}")
    runner = CliRunner()
    before = runner.invoke(db_cli, ["current", "--check"])
    assert before.exit_code == 1 and "needs `clarity db upgrade`" in before.output
    result = runner.invoke(db_cli, ["upgrade"])
    assert result.exit_code == 0, result.output
    after = runner.invoke(db_cli, ["current", "--check"])
    assert after.exit_code == 0 and "up to date" in after.output
    down = runner.invoke(db_cli, ["downgrade", "base", "--yes"])
    assert down.exit_code == 0 and "revision None" in down.output
