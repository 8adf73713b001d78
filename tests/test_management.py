"""Queue management: counts by state and priority, pause/resume, clear, lookup."""

import datetime as dt

from tests.helpers import recorded, wait_for
from worker.management import QueueManager, _iso_ms
from worker.producer import enqueue


def test_counts_by_state_and_priority(env):
    for priority in ("LOW", "NORMAL", "NORMAL", "HIGH", "CRITICAL", 7):
        enqueue("sync", "record", {}, priority=priority)
    enqueue("sync", "record", {}, delay=3600)
    counts = QueueManager().counts("sync")
    assert counts["waiting"] == 6
    assert counts["waitingByPriority"] == {"critical": 1, "high": 1, "normal": 2, "low": 1,
                                           "other": 1}
    assert counts["delayed"] == 1 and counts["active"] == 0 and counts["failed"] == 0


def test_clear_by_state_touches_only_that_state(env):
    manager = QueueManager()
    for i in range(1200):
        enqueue("sync", "record", {"n": i})
    enqueue("sync", "record", {}, delay=3600)
    assert manager.clear("sync", "waiting") == 1200
    counts = manager.counts("sync")
    assert counts["waiting"] == 0 and counts["delayed"] == 1


def test_job_lookup_by_id(env):
    job = enqueue("email", "record", {"n": 7, "to": "a@example.com"}, priority="HIGH")
    manager = QueueManager()
    found = manager.find_job(job.id)
    assert found["queue"] == "email" and found["state"] == "waiting"
    assert found["priority"] == 5 and found["payload"] == {"n": 7, "to": "a@example.com"}
    assert manager.get_job("sync", job.id) is None


def test_promote_runs_a_delayed_job_now(env):
    job = enqueue("sync", "record", {"n": 1}, delay=3600)
    manager = QueueManager()
    assert manager.promote("sync", job.id)
    assert manager.counts("sync")["waiting"] == 1
    assert not manager.promote("sync", job.id)


def test_pause_stops_new_jobs_and_resume_restarts(env, workers):
    manager = QueueManager()
    manager.pause("sync")
    workers(lease_seconds=5)
    for i in range(5):
        enqueue("sync", "record", {"n": i})
    import time

    time.sleep(1.5)
    assert recorded("done") == []
    assert manager.counts("sync")["paused"]
    manager.resume("sync")
    wait_for(lambda: len(recorded("done")) == 5, message="jobs after resume")


def test_workers_are_listed_while_running_and_leave_on_a_clean_stop(env, workers):
    manager = QueueManager()
    worker = workers(queues=("sync", "email"), lease_seconds=1)
    seen = wait_for(lambda: (alive := [w for w in manager.workers() if w["alive"]])
                    and {w["queue"] for w in alive} == {"sync", "email"} and alive,
                    timeout=15, message="heartbeats of both queues")
    assert all(w["concurrency"] == 4 for w in seen)
    worker.stop()
    assert manager.workers() == []


def test_timestamps_are_iso_8601_utc_to_the_millisecond():
    # Redis keeps milliseconds as integers in job hashes and as float scores in sorted sets;
    # each minute's text is cached, so neighbouring minutes and midnight must not mix up.
    def expected(ms):
        t = dt.datetime(1970, 1, 1) + dt.timedelta(milliseconds=ms)
        return t.isoformat(timespec="milliseconds") + "Z"

    for ms in (0, 999, 59_999, 60_000, 1_767_225_599_999, 1_767_225_600_000, 1_767_225_600_001,
               951_782_400_123):  # 2025-12-31T23:59:59.999, its next millisecond, 2000-02-29
        for raw in (ms, str(ms).encode(), str(ms), f"{ms}.0".encode()):
            assert _iso_ms(raw) == expected(ms), raw
    assert _iso_ms(b"1767225600000") == "2026-01-01T00:00:00.000Z"
    assert _iso_ms(None) is None and _iso_ms(b"") is None
