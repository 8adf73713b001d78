"""Fallback: Redis SIGKILLed in the middle of a burst of enqueues. Every job still gets an
id, and every job runs exactly once, by a queue worker or by the legacy poller."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest

from app.db.engine import get_engine
from app.dispatch import QueueUnavailable
from app.migration.legacy import LegacyStore, Origin, Status
from app.migration.poller import LegacyPoller
from app.queue_service import QueueService
from tests.helpers import wait_for
from tests.migration.jobs import executions
from worker.management import QueueManager
from worker.settings import get_settings

TASKS = "tests.jobs,tests.migration.jobs"


@pytest.fixture
def killable_redis(redis_factory):
    return redis_factory()


def test_redis_killed_mid_burst_of_2000_enqueues_every_job_runs_exactly_once(
        database, configure, migration_env, workers, killable_redis, tmp_path, monkeypatch):
    server = killable_redis
    count_file = tmp_path / "count.log"
    extra = {"task_modules": TASKS, "database_url": database,
             "clarity_test_count_file": str(count_file)}
    configure(server, **extra)
    monkeypatch.setenv("CLARITY_TEST_RUNNER", "legacy")  # in this process: the poller
    migration_env(enable_queue="true", migration_mode="immediate", fallback_to_legacy="true",
                  breaker_failure_threshold=3, breaker_reset_seconds=0.3)
    service = QueueService().initialize()
    store = LegacyStore(get_engine())
    poller = LegacyPoller(store, get_settings(), name="poller", batch_size=100)
    stop = threading.Event()
    poll_thread = threading.Thread(target=poller.run, args=(stop, 0.05), daemon=True)
    poll_thread.start()

    results: dict[int, object] = {}
    killed = threading.Event()

    def produce(first: int, n: int):
        for i in range(first, first + n):
            if i == 250 and not killed.is_set():
                killed.set()  # thread 0 pulls the plug while the others keep going
                threading.Thread(target=server.kill).start()
            results[i] = service.enqueue("sync", "count", {"n": i})

    threads = [threading.Thread(target=produce, args=(k * 500, 500)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 2000
    assert len({r.id for r in results.values()}) == 2000  # every caller got its own job id
    routes = Counter(r.route for r in results.values())
    assert routes["queue"] > 0 and routes["fallback"] > 0, routes
    origins = store.counts()["origin"]

    # Redis comes back (AOF); a worker drains the queue; the poller hands unsure rows back.
    time.sleep(0.5)
    server.start()
    workers(server, queues=("sync",), concurrency=8, clarity_test_runner="queue", **extra)
    # New jobs go to the queue again once the breaker's probe succeeds.
    later = wait_for(lambda: (r := service.enqueue("sync", "count", {"n": 5000}))
                       .route == "queue" and r, timeout=10, message="the breaker to close")
    results[5000] = later

    def all_ran():
        return len({n for n, _ in executions(count_file)}) >= 2001

    wait_for(all_ran, timeout=90, interval=0.2, message="every job to run")
    time.sleep(2.0)  # let any duplicate show up
    ran = Counter(n for n, _ in executions(count_file))
    assert set(ran) == {str(i) for i in results}, "lost or unknown jobs"
    twice = {n: c for n, c in ran.items() if c > 1}
    assert not twice, f"jobs run more than once: {twice}"
    by_runner = Counter(runner for _, runner in executions(count_file))
    assert by_runner["legacy"] == sum(1 for r in results.values() if r.route == "fallback") \
        - store.counts()["status"].get(Status.MOVED, 0)
    stop.set()
    poll_thread.join(10)
    left = store.counts()["status"]
    assert set(left) <= {Status.DONE, Status.MOVED}, left
    print(f"\nroutes {dict(routes)}, fallback origins {origins}, ran by {dict(by_runner)}, "
          f"rows {left}, breaker opened {service.dispatcher.breaker.opened_count}x")


def test_without_fallback_the_caller_gets_a_clear_error(database, configure, migration_env,
                                                       killable_redis):
    configure(killable_redis, task_modules=TASKS, database_url=database)
    migration_env(enable_queue="true", migration_mode="immediate", fallback_to_legacy="false")
    service = QueueService()
    assert service.enqueue("sync", "ping", {}).route == "queue"
    killable_redis.kill()
    with pytest.raises(QueueUnavailable, match="FALLBACK_TO_LEGACY is off"):
        service.enqueue("sync", "ping", {})
    assert LegacyStore(get_engine()).counts()["status"] == {}


def test_redis_out_of_memory_falls_back_as_certainly_not_queued(
        database, configure, migration_env, redis_factory):
    server = redis_factory("oom", extra=("--maxmemory", "3mb"))
    configure(server, task_modules=TASKS, database_url=database)
    migration_env(enable_queue="true", migration_mode="immediate",
                  fallback_to_legacy="true", breaker_failure_threshold=1000)
    service = QueueService()
    blob = "x" * 30_000
    routes = Counter(service.enqueue("sync", "ping", {"blob": blob}).route
                     for _ in range(300))
    assert routes["queue"] > 0 and routes["fallback"] > 0, routes
    origins = LegacyStore(get_engine()).counts()["origin"]
    assert origins == {Origin.FALLBACK: routes["fallback"]}  # OOM: Redis wrote nothing
    queued = QueueManager().counts("sync")
    assert queued["waiting"] == routes["queue"], queued


def test_a_bulk_whose_second_queue_fails_falls_back_only_what_did_not_land(
        database, configure, migration_env, redis_server, monkeypatch):
    from redis.exceptions import ConnectionError as RedisConnectionError

    from worker.hueys import get_huey

    configure(redis_server, task_modules=TASKS, database_url=database)
    migration_env(enable_queue="true", migration_mode="immediate", fallback_to_legacy="true",
                  breaker_failure_threshold=1000)
    service = QueueService()
    storage = get_huey("email").storage

    def refused(*args, **kwargs):
        raise RedisConnectionError("Error 111 connecting to 127.0.0.1:1. Connection refused.")

    monkeypatch.setattr(storage, "enqueue_jobs", refused)
    jobs = [{"queue": "sync", "task": "ping", "payload": {"n": i}} for i in range(3)] + \
           [{"queue": "email", "task": "ping", "payload": {"n": i}} for i in range(2)]
    routes = [(s.queue, s.route) for s in service.enqueue_bulk(jobs)]
    assert routes == [("sync", "queue")] * 3 + [("email", "fallback")] * 2
    rows = LegacyStore(get_engine()).counts()
    assert rows["origin"] == {Origin.FALLBACK: 2}  # the sync jobs landed: no second copy
    assert QueueManager().counts("sync")["waiting"] == 3


def test_one_bad_row_in_an_unsure_hand_back_fails_alone(database, configure, migration_env,
                                                        redis_server):
    from app.migration.legacy import NewRow

    configure(redis_server, task_modules=TASKS, database_url=database)
    store = LegacyStore(get_engine())
    store.insert([NewRow("sync", "ping", {"n": 1}, 3, Origin.FALLBACK_UNSURE, "u-1", "k-1"),
                  NewRow("sync", "no_such_task", {"n": 2}, 3, Origin.FALLBACK_UNSURE, "u-2",
                         "k-2"),
                  NewRow("sync", "ping", {"n": 3}, 3, Origin.FALLBACK_UNSURE, "u-3", "k-3")])
    stats = LegacyPoller(store, get_settings(), name="hand-back").run_once()
    assert stats.requeued == 2 and stats.failed == 1
    assert store.counts()["status"] == {Status.MOVED: 2, Status.FAILED: 1}
    assert QueueManager().counts("sync")["waiting"] == 2


def test_the_breaker_is_never_left_half_open_by_an_error_that_is_not_redis(
        database, configure, migration_env, redis_server, monkeypatch):
    from app import dispatch

    configure(redis_server, task_modules=TASKS, database_url=database)
    migration_env(enable_queue="true", migration_mode="immediate", fallback_to_legacy="true",
                  breaker_failure_threshold=1, breaker_reset_seconds=0.1)
    service = QueueService()
    breaker = service.dispatcher.breaker
    breaker.failure()  # open
    time.sleep(0.15)   # half-open: the next call is the probe
    monkeypatch.setattr(dispatch, "enqueue_many",
                        lambda *a, **k: (_ for _ in ()).throw(TypeError("a bug")))
    with pytest.raises(TypeError):
        service.enqueue("sync", "ping", {})
    monkeypatch.undo()
    assert service.enqueue("sync", "ping", {}).route == "queue"  # the next caller probes
    assert breaker.state.value == "closed"
