"""At-least-once delivery, proven against real redis-server and real worker processes."""

import collections
import itertools
import random
import signal
import time

import pytest

from tests.helpers import recorded, wait_for
from worker.management import QueueManager
from worker.producer import JobRequest, enqueue, enqueue_many
from worker.queues import Priority


def test_priority_then_fifo_for_1000_mixed_jobs_on_one_worker_thread(env, workers):
    rng = random.Random(7)
    priorities = [rng.choice(list(Priority)) for _ in range(1000)]
    enqueue_many([JobRequest("sync", "record", {"n": i}, priority=p)
                  for i, p in enumerate(priorities)])
    workers(concurrency=1)
    done = wait_for(lambda: (d := recorded("done")) and len(d) == 1000 and d, timeout=60,
                    message="1000 jobs")
    expected = sorted(range(1000), key=lambda i: (-priorities[i], i))
    assert [int(n) for n in done] == expected


def test_delayed_and_scheduled_jobs_never_run_early_and_do_run(env, workers):
    import datetime as dt

    from tests.jobs import redis_now

    workers()
    enqueue("sync", "record", {"n": "ready"})  # the worker is up once this has run
    wait_for(lambda: recorded("done") == ["ready"], message="worker ready")
    # Every time here is Redis' clock: the one that decides what is due, and the one the
    # `stamp` job records (this machine's clock may be moved by a test run, or just off).
    due = {}
    for i, delay in enumerate((0.5, 1.0, 1.7, 2.5)):
        now = redis_now()
        enqueue("sync", "stamp", {"n": i}, delay=delay)
        due[str(i)] = now + delay
    at = dt.datetime.fromtimestamp(redis_now() + 2, dt.UTC)
    enqueue("sync", "stamp", {"n": 9}, scheduled_at=at)
    due["9"] = at.timestamp()
    stamps = wait_for(lambda: (s := recorded("stamps")) and len(s) == 5 and s, timeout=30,
                      message="delayed jobs")
    for entry in stamps:
        n, started = entry.split(":")
        assert float(started) - due[n] >= -0.01, f"job {n} ran early"
    # How late they start is a benchmark figure (bench/queue_bench.py), not asserted here.


def test_worker_killed_mid_job_redelivers_each_unfinished_job_once(env, workers):
    for i in range(80):
        enqueue("sync", "record", {"n": i, "sleep": 1.5})
    first = workers(concurrency=50, lease_seconds=2)
    wait_for(lambda: len(recorded("started")) >= 50, message="50 jobs running")
    time.sleep(0.2)
    finished_before_kill = set(recorded("done"))
    first.kill()  # SIGKILL: no cleanup at all
    started_before_kill = collections.Counter(recorded("started"))
    workers(concurrency=50, lease_seconds=2)
    wait_for(lambda: len(recorded("done")) >= 80, timeout=40, message="all 80 jobs done")
    time.sleep(1.0)  # nothing more may run
    done = collections.Counter(recorded("done"))
    assert set(done) == {str(i) for i in range(80)}, "a job was lost"
    assert all(c == 1 for c in done.values()), f"a job ran twice: {done.most_common(3)}"
    started = collections.Counter(recorded("started"))
    for n in finished_before_kill:
        assert started[n] == 1, f"job {n} had finished but ran again"
    interrupted = [n for n in started_before_kill if n not in finished_before_kill]
    assert len(interrupted) >= 40
    for n in interrupted:
        assert started[n] == 2, f"interrupted job {n} ran {started[n]} times"
    assert QueueManager().counts("sync")["active"] == 0


def test_job_running_three_times_its_lease_renews_and_runs_once(env, workers):
    enqueue("sync", "record", {"n": "long", "sleep": 3.0})
    workers(concurrency=2, lease_seconds=1)
    workers(concurrency=2, lease_seconds=1)  # a second consumer whose reaper is watching
    wait_for(lambda: recorded("done") == ["long"], timeout=15, message="long job")
    time.sleep(1.5)
    assert recorded("started") == ["long"]
    assert recorded("done") == ["long"]


def test_graceful_stop_lets_running_jobs_finish_and_returns_the_rest_at_once(env, workers):
    for i in range(30):
        enqueue("sync", "record", {"n": i, "sleep": 1.0})
    worker = workers(concurrency=2, lease_seconds=30)
    wait_for(lambda: len(recorded("started")) >= 2, message="two jobs running")
    running = set(recorded("started"))
    stop_at = time.monotonic()
    worker.signal(signal.SIGINT)
    assert worker.wait(10) == 0
    assert time.monotonic() - stop_at < 3
    assert set(recorded("done")) >= running  # running jobs finished
    counts = QueueManager().counts("sync")
    assert counts["active"] == 0, "leased but unstarted jobs were not returned"
    assert counts["waiting"] + len(recorded("done")) == 30


@pytest.mark.parametrize("mode", ["threads", "processes"])
def test_graceful_stop_timeout_returns_a_still_running_job_to_the_queue(env, workers, mode):
    enqueue("sync", "record", {"n": "slow", "sleep": 30})
    worker = workers(concurrency=1, lease_seconds=30, shutdown_timeout=1,
                     extra_args=("--processes",) if mode == "processes" else ())
    wait_for(lambda: recorded("started") == ["slow"], message="slow job running")
    worker.signal(signal.SIGTERM)
    assert worker.wait(10) == 0
    counts = QueueManager().counts("sync")
    assert counts["active"] == 0 and counts["waiting"] == 1


def test_redis_restart_between_enqueue_and_processing_loses_nothing(configure, redis_factory,
                                                                    workers):
    server = configure(redis_factory("aof"))
    for i in range(200):
        enqueue("sync", "record", {"n": i}, priority=random.choice(list(Priority)))
    enqueue("sync", "record", {"n": "later"}, delay=1)
    server.restart()  # SIGTERM: redis-server fsyncs the AOF and exits; it replays it at start
    workers(server=server)
    wait_for(lambda: len(recorded("done")) == 201, timeout=30, message="all jobs after restart")


def test_worker_survives_a_redis_outage_and_resumes(configure, redis_factory, workers):
    server = configure(redis_factory("outage"))
    workers(server=server, lease_seconds=2)
    enqueue("sync", "record", {"n": "before"})
    wait_for(lambda: recorded("done") == ["before"], message="first job")
    server.stop()
    time.sleep(2)
    server.start()
    enqueue("sync", "record", {"n": "after"})
    wait_for(lambda: recorded("done") == ["before", "after"], timeout=20,
             message="job after the outage")


def test_tampered_message_is_not_executed_and_is_parked_as_bad_signature(env, workers):
    from worker.hueys import get_huey

    job = enqueue("sync", "record", {"n": "original"})
    huey = get_huey("sync")
    key = huey.storage.keys.job(job.id)
    msg = huey.storage.conn.hget(key, "msg")
    huey.storage.conn.hset(key, "msg", msg.replace(b'"original"', b'"evil"'))
    forged = enqueue("sync", "record", {"n": "forged"})
    huey.storage.conn.hset(huey.storage.keys.job(forged.id), "msg",
                           b'v1.' + b'0' * 64 + b'.{"q":"sync","id":"x","task":"record"}')
    workers()
    manager = QueueManager()
    wait_for(lambda: manager.counts("sync")["failed"] == 2, message="two parked messages")
    assert recorded("done") == []
    for job_id in (job.id, forged.id):
        parked = manager.get_job("sync", job_id)
        assert parked["reason"] == "bad signature"
        assert parked["errorType"] == "BadSignature"


def test_retries_back_off_then_fail_and_retry_failed_runs_to_success(env, workers):
    from tests.helpers import test_key
    from worker.connections import redis_client

    job = enqueue("sync", "flaky", {"n": "f1"})
    workers()
    manager = QueueManager()
    wait_for(lambda: manager.counts("sync")["failed"] == 1, timeout=20, message="failed job")
    times = [float(e.split(":")[1]) for e in recorded("attempt_times")]
    assert len(times) == 4  # first attempt + 3 retries
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # base 0.2s doubling with jitter in [ceiling/2, ceiling], capped at 1s
    for gap, ceiling in zip(gaps, (0.2, 0.4, 0.8)):
        assert ceiling / 2 - 0.05 <= gap <= ceiling + 0.6, gaps
    failed = manager.get_job("sync", job.id)
    assert failed["attempts"] == 4
    assert failed["errorType"] == "RuntimeError"
    assert "flaky failure 4" in failed["error"]
    assert "Traceback" in failed["traceback"]
    assert failed["firstFailedAt"] and failed["lastFailedAt"]
    page = manager.list_failed("sync")
    assert page["total"] == 1 and page["jobs"][0]["id"] == job.id
    redis_client().set(test_key("heal"), 1)
    assert manager.retry_failed("sync", job.id) == 1
    wait_for(lambda: recorded("done") == ["f1"], message="retried job succeeds")
    assert manager.counts("sync")["failed"] == 0


def test_job_abandoned_after_max_deliveries_is_parked_visibly(env, workers):
    enqueue("sync", "record", {"n": "doomed", "sleep": 30})
    for _ in range(2):
        w = workers(concurrency=1, lease_seconds=1, max_deliveries=2)
        wait_for(lambda: "doomed" in recorded("started"), message="job started")
        w.kill()
        from tests.helpers import test_key
        from worker.connections import redis_client

        redis_client().delete(test_key("started"))
    workers(concurrency=1, lease_seconds=1, max_deliveries=2)
    manager = QueueManager()
    wait_for(lambda: manager.counts("sync")["failed"] == 1, timeout=15, message="abandoned")
    parked = manager.list_failed("sync")["jobs"][0]
    assert parked["reason"] == "abandoned"
    assert recorded("done") == []
