"""The legacy poller: claims due rows without overlap, runs the handlers, settles rows
with attempts and errors, and takes over a crashed poller's rows after the claim."""

from __future__ import annotations

import datetime as dt
import threading
from collections import Counter

import pytest
import sqlalchemy as sa

from app.db.engine import get_engine
from app.db.schema import queued_sync, utcnow
from app.migration.legacy import LegacyStore, NewRow, Origin, Status
from app.migration.poller import LegacyPoller
from tests.helpers import wait_for
from tests.migration.jobs import executions
from worker.settings import get_settings


@pytest.fixture
def count_file(tmp_path, monkeypatch):
    path = tmp_path / "count.log"
    monkeypatch.setenv("CLARITY_TEST_COUNT_FILE", str(path))
    monkeypatch.setenv("CLARITY_TEST_RUNNER", "legacy")
    return path


@pytest.fixture
def store(env, database, configure, redis_server):
    configure(redis_server, task_modules="tests.jobs,tests.migration.jobs")
    return LegacyStore(get_engine())


def rows(n, task="count", start=0, **kw):
    return [NewRow("sync", task, {"n": start + i}, 3, Origin.ROUTED, f"job-{start + i}",
                   f"key-{start + i}", **kw) for i in range(n)]


def statuses(store) -> dict:
    return store.counts()["status"]


def test_poller_runs_due_rows_and_marks_them_done_failed_or_retried(store, count_file):
    later = utcnow() + dt.timedelta(hours=1)
    store.insert(rows(5) + rows(1, "boom", 100) + rows(1, "permanent", 200)
                 + rows(2, start=300, scheduled_at=later))
    poller = LegacyPoller(store, get_settings(), batch_size=50)
    first = poller.run_once()
    assert (first.done, first.failed, first.retried) == (5, 1, 1)
    assert sorted(int(n) for n, _ in executions(count_file)) == [0, 1, 2, 3, 4]
    with store.engine.connect() as conn:
        boom = conn.execute(sa.select(queued_sync).where(queued_sync.c.task == "boom")).one()
        permanent = conn.execute(sa.select(queued_sync)
                                 .where(queued_sync.c.task == "permanent")).one()
        conn.execute(sa.select(queued_sync.c.id)).all()
    assert (boom.status, boom.attempts) == (Status.PENDING, 1)
    assert "RuntimeError: boom 100" in boom.last_error
    assert (permanent.status, permanent.attempts) == (Status.FAILED, 1)
    # The retry is due after its backoff; the second attempt is the last (retries=1).
    with store.engine.begin() as conn:
        conn.execute(queued_sync.update().where(queued_sync.c.task == "boom")
                     .values(scheduled_at=utcnow() - dt.timedelta(seconds=1)))
    poller.run_once()
    with store.engine.connect() as conn:
        boom = conn.execute(sa.select(queued_sync).where(queued_sync.c.task == "boom")).one()
    assert (boom.status, boom.attempts) == (Status.FAILED, 2)
    assert statuses(store) == {Status.DONE: 5, Status.FAILED: 2, Status.PENDING: 2}


def test_two_pollers_never_run_a_row_twice(store, count_file):
    store.insert(rows(400))
    pollers = [LegacyPoller(store, get_settings(), name=f"p{i}", batch_size=7)
               for i in range(4)]

    def drain(poller):
        while poller.run_once().claimed:
            pass

    threads = [threading.Thread(target=drain, args=(p,)) for p in pollers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    counts = Counter(n for n, _ in executions(count_file))
    assert len(counts) == 400 and set(counts.values()) == {1}
    assert sum(p.totals.done for p in pollers) == 400
    assert statuses(store) == {Status.DONE: 400}


def test_a_crashed_pollers_rows_are_taken_over_after_the_claim(store, count_file):
    store.insert(rows(10))
    # Long enough that a busy machine still asks before it expires; then poll until it has.
    crashed = store.claim("crashed", 10, 2.0, to_status=Status.PROCESSING,
                          from_statuses=(Status.PENDING,), due_only=True,
                          stale_status=Status.PROCESSING)
    assert len(crashed) == 10
    poller = LegacyPoller(store, get_settings(), name="survivor")
    assert poller.run_once().claimed == 0  # the claim still holds
    done = []
    wait_for(lambda: done.append(poller.run_once().done) or sum(done) == 10, timeout=15,
             interval=0.2, message="the expired claim to be taken over")
    # The crashed poller, waking up, cannot overwrite the survivor's outcome.
    assert store.mark_failed(crashed[0].id, "crashed", 1, "late") == 0
    assert statuses(store) == {Status.DONE: 10}


def test_rows_of_the_old_scheduler_are_the_sync_job(store):
    now = utcnow()
    with store.engine.begin() as conn:
        conn.execute(queued_sync.insert().values(user_id=42, sync_type="MANUAL", priority=5,
                                                 scheduled_at=now, created_at=now,
                                                 updated_at=now))
    [row] = store.claim("x", 5, 10, to_status=Status.MIGRATING,
                        from_statuses=(Status.PENDING,), due_only=False)
    assert (row.queue, row.task, row.payload) == ("sync", "sync_user",
                                                  {"user_id": 42, "sync_type": "MANUAL"})
    assert row.origin == Origin.LEGACY
    assert row.stable_idempotency_key.startswith(f"queued_sync:{row.id}:")


def test_inserting_a_seen_idempotency_key_returns_the_first_job_id(store):
    assert store.insert(rows(1)) == ["job-0"]
    again = NewRow("sync", "count", {"n": 0}, 3, Origin.FALLBACK, "other-id", "key-0")
    assert store.insert([again] + rows(1, start=1)) == ["job-0", "job-1"]
    assert store.counts()["status"] == {Status.PENDING: 2}
