"""Moving legacy rows into the queues: exactly once per row, even with two migrators
racing and one SIGKILLed half-way; resumable; a dry run changes nothing."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from app.cli import main
from app.db.engine import get_engine
from app.db.schema import queued_sync, utcnow
from app.devstack import REPO
from app.migration.legacy import LegacyStore, Status
from app.migration.migrator import Migrator
from tests.helpers import clarity_env, wait_for
from worker.connections import redis_client
from worker.queues import QueueKeys
from worker.settings import get_settings

TASKS = "app.jobs.sync,tests.jobs,tests.migration.jobs"


def seed(engine, n: int) -> None:
    """n rows as the old scheduler wrote them (sync columns only, no queue/task), a fifth
    due in the future, plus every tenth a generic job with its own idempotency key."""
    now = utcnow()
    rows = []
    for i in range(n):
        row = {"user_id": 1000 + i, "sync_type": ("MANUAL", "SCHEDULED", "WEBHOOK")[i % 3],
               "priority": (5, 3, 10, 1)[i % 4], "status": Status.PENDING,
               "scheduled_at": now + dt.timedelta(hours=2) if i % 5 == 0
               else now - dt.timedelta(days=3),
               "created_at": now, "updated_at": now}
        if i % 10 == 1:
            row.update(queue="sync", task="count", payload={"n": i},
                       idempotency_key=f"seed-{i}", job_id=f"seed-job-{i}")
        rows.append(row)
    with engine.begin() as conn:
        conn.execute(queued_sync.insert(), rows)


def queued_ids() -> list[str]:
    keys = QueueKeys(get_settings().redis_key_prefix, "sync")
    client = redis_client()
    ids = client.zrange(keys.waiting, 0, -1) + client.zrange(keys.delayed, 0, -1)
    return [i.decode() for i in ids]


def moved_rows(engine) -> list:
    with engine.connect() as conn:
        return conn.execute(sa.select(queued_sync.c.id, queued_sync.c.status,
                                      queued_sync.c.job_id)).all()


@pytest.fixture
def setup(env, database, configure, redis_server):
    configure(redis_server, task_modules=TASKS, database_url=database)
    return get_engine()


def test_two_migrators_racing_one_sigkilled_half_way_move_every_row_exactly_once(
        setup, redis_server, prefix, database, tmp_path):
    engine = setup
    seed(engine, 5000)
    env = {**os.environ, **clarity_env(redis_server, prefix, task_modules=TASKS,
                                       database_url=database), "PYTHONUNBUFFERED": "1"}

    def start(name):
        log = open(tmp_path / f"{name}.log", "wb")  # noqa: SIM115 - closed with the test
        return subprocess.Popen(
            [sys.executable, "-m", "app", "migrate", "run", "--force", "--quiet",
             "--batch-size", "100", "--claim-seconds", "2", "--name", name],
            env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)

    victim, survivor = start("victim"), start("survivor")

    def moved():
        with engine.connect() as conn:
            return conn.execute(sa.select(sa.func.count()).where(
                queued_sync.c.status == Status.MOVED)).scalar_one()

    def victim_holds():
        with engine.connect() as conn:
            return conn.execute(sa.select(sa.func.count()).where(
                queued_sync.c.claimed_by == "victim",
                queued_sync.c.status == Status.MIGRATING)).scalar_one()

    # Kill it half-way, while it holds claimed rows (they may already be in the queue).
    wait_for(lambda: moved() >= 1500 and victim_holds(), timeout=60, interval=0.002,
               message="half the rows, with the victim holding a batch")
    victim.send_signal(signal.SIGKILL)
    victim.wait(10)
    held = victim_holds()
    assert survivor.wait(90) == 0, (tmp_path / "survivor.log").read_text()[-2000:]
    rows = moved_rows(engine)
    assert {r.status for r in rows} == {Status.MOVED}
    job_ids = [r.job_id for r in rows]
    assert len(set(job_ids)) == 5000
    queued = queued_ids()
    assert len(queued) == 5000, "a row was enqueued twice or not at all"
    assert set(queued) == set(job_ids)
    print(f"\nvictim killed holding {held} claimed rows; all 5000 moved once")


def test_a_migrator_dying_between_enqueue_and_mark_is_resumed_without_duplicates(setup):
    engine = setup
    seed(engine, 300)
    store = LegacyStore(engine)
    crashing = Migrator(store, get_settings(), name="crashing", batch_size=120,
                        claim_seconds=0.2)
    real_mark = store.mark_moved
    calls = []

    def die_on_second_batch(moved, holder):
        calls.append(len(moved))
        if len(calls) == 2:
            raise KeyboardInterrupt("killed after the enqueue")  # nothing is marked
        return real_mark(moved, holder)

    store.mark_moved = die_on_second_batch
    with pytest.raises(KeyboardInterrupt):
        crashing.run()
    assert len(queued_ids()) == 240  # two batches reached the queue, one was marked
    store.mark_moved = real_mark
    wait_for(lambda: True)
    report = Migrator(store, get_settings(), name="next", batch_size=120,
                      claim_seconds=0.2).run(poll_seconds=0.1)
    assert report.moved == 180 and report.already_queued == 120
    rows = moved_rows(engine)
    assert {r.status for r in rows} == {Status.MOVED}
    assert sorted(queued_ids()) == sorted(r.job_id for r in rows)


def test_dry_run_counts_and_changes_nothing_then_run_moves_with_a_progress_bar(
        setup, migration_env):
    seed(get_engine(), 50)
    runner = CliRunner()
    result = runner.invoke(main, ["migrate", "run", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "would move 50 pending rows" in result.output
    assert queued_ids() == []
    migration_env(migrate_existing_jobs="false")
    refused = runner.invoke(main, ["migrate", "run"])
    assert refused.exit_code != 0 and "MIGRATE_EXISTING_JOBS is off" in refused.output
    migration_env(migrate_existing_jobs="true")
    result = runner.invoke(main, ["migrate", "run", "--batch-size", "20"])
    assert result.exit_code == 0, result.output
    assert "moved 50 rows" in result.output and "moving legacy rows" in result.output
    assert len(queued_ids()) == 50
    again = runner.invoke(main, ["migrate", "run"])
    assert "moved 0 rows" in again.output  # resumable: nothing left, nothing repeated


def test_status_on_a_database_never_migrated_says_what_to_run(env, configure, redis_server,
                                                              tmp_path):
    configure(redis_server, task_modules=TASKS,
              database_url=f"sqlite:///{tmp_path / 'never-migrated.db'}")
    result = CliRunner().invoke(main, ["migrate", "status"])
    assert result.exit_code == 0, result.output
    assert "legacy table: unavailable" in result.output
    assert "run `clarity db upgrade`" in result.output
    assert "[SQL:" not in result.output  # no SQLAlchemy dump
