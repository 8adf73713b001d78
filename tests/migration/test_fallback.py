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
