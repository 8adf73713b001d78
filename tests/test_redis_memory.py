"""Redis memory stays bounded: idempotency keys only when asked for, kept as long as they
matter; failed jobs pruned by age and count."""

from __future__ import annotations

from tests.admin.helpers import make_failed
from worker.connections import redis_client
from worker.management import QueueManager
from worker.producer import enqueue
from worker.settings import get_settings


def idempotency_keys() -> list[bytes]:
    prefix = get_settings().redis_key_prefix
    return list(redis_client().scan_iter(match=f"{prefix}:*idem:*", count=1000))


def test_a_job_without_an_idempotency_key_leaves_none_behind(env):
    for i in range(20):
        enqueue("sync", "record", {"n": i})
    enqueue("sync", "record", {"n": "later"}, delay=60)
    assert idempotency_keys() == []


def test_an_idempotency_key_outlives_its_delayed_jobs_wait(env):
    ten_days = 10 * 86400
    job = enqueue("sync", "record", {"n": 1}, delay=ten_days, idempotency_key="once")
    again = enqueue("sync", "record", {"n": 1}, delay=ten_days, idempotency_key="once")
    assert again.id == job.id and not again.created
    [key] = idempotency_keys()
    ttl_s = redis_client().pttl(key) / 1000
    assert ttl_s > ten_days + 6.9 * 86400  # the wait, plus the week it is remembered after


def test_failed_jobs_are_pruned_by_age_then_by_count(env):
    manager = QueueManager()
    old = make_failed(manager, n=3, error="long ago")
    recent = make_failed(manager, n=5, error="recent")
    failed_key = manager.keys("sync").failed
    seconds, _ = redis_client().time()
    day_ms = 86400 * 1000
    # Pretend the first three failed 40 days ago (by Redis' clock, as the set is scored).
    redis_client().zadd(failed_key, {i: (seconds * 1000) - 40 * day_ms for i in old}, xx=True)
    # ...and the recent ones a second apart, oldest first (the same millisecond would tie).
    redis_client().zadd(failed_key, {job_id: (seconds - 10 + n) * 1000
                                     for n, job_id in enumerate(recent)}, xx=True)
    removed = manager.prune_failed("sync", max_age_seconds=30 * 86400, max_count=4)
    assert removed == {"age": 3, "count": 1}
    left = {j["id"] for j in manager.list_failed("sync", limit=50)["jobs"]}
    assert left == set(recent[1:])  # the oldest of the recent ones went for the count
    assert not any(redis_client().exists(manager.keys("sync").job(i)) for i in old)
    assert manager.check_invariants("sync") == []


def test_pruning_failed_jobs_is_part_of_the_hourly_cleanup(env, monkeypatch):
    from app.jobs.cleanup import prune_failed_jobs

    manager = QueueManager()
    make_failed(manager, n=3)
    monkeypatch.setenv("FAILED_MAX_JOBS", "1")
    from worker.settings import reset_settings_cache

    reset_settings_cache()
    assert prune_failed_jobs()["sync"] == {"age": 0, "count": 2}
    assert manager.counts("sync")["failed"] == 1
