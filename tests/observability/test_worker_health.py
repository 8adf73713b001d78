"""The worker's health server against real redis-server and real worker processes."""

from __future__ import annotations

import pytest

from app.devstack.processes import free_port
from tests.helpers import recorded, wait_for
from tests.observability.helpers import get_json, has, scrape, value
from worker.management import QueueManager
from worker.producer import enqueue


def _url(port: int, path: str) -> str:
    return f"http://127.0.0.1:{port}{path}"


def _healthy(port):
    return get_json(_url(port, "/health"))[0] == 200


@pytest.mark.parametrize("mode", ["threads", "processes"])
def test_metrics_move_as_jobs_run_retry_and_fail(env, workers, mode):
    port = free_port()
    workers(concurrency=2, extra_args=("--processes",) if mode == "processes" else (),
            health_check_port=port, health_check_host="127.0.0.1")
    wait_for(lambda: _healthy(port), message="worker healthy")
    before = scrape(_url(port, "/metrics"))
    assert value(before, "clarity_worker_up") == 1
    assert value(before, "clarity_redis_up") == 1
    assert value(before, "clarity_jobs_completed_total") == 0
    assert value(before, "clarity_worker_start_time_seconds") > 1.7e9

    for i in range(3):
        enqueue("sync", "record", {"n": i})
    enqueue("sync", "permanent", {})
    enqueue("sync", "flaky", {"n": "f", "succeed_on": 2})
    wait_for(lambda: len(recorded("done")) == 4, message="4 jobs done")

    def settled():
        s = scrape(_url(port, "/metrics"))
        done = value(s, "clarity_jobs_completed_total", queue="sync")
        return s if done == 4 and value(s, "clarity_jobs_failed_total") == 1 else None

    after = wait_for(settled, timeout=10, message="counters settled")
    assert value(after, "clarity_jobs_completed_total", queue="sync", task="record") == 3
    assert value(after, "clarity_jobs_completed_total", queue="sync", task="flaky") == 1
    assert value(after, "clarity_jobs_retried_total", queue="sync", task="flaky") == 1
    assert value(after, "clarity_jobs_failed_total", queue="sync", task="permanent") == 1
    assert value(after, "clarity_job_duration_seconds_count", queue="sync") == 6
    assert value(after, "clarity_job_wait_seconds_count", queue="sync") == 6
    assert value(after, "clarity_jobs", queue="sync", state="failed") == 1
    assert value(after, "clarity_worker_active_jobs") == 0
    assert value(after, "clarity_redis_roundtrip_seconds") > 0
    # CPU and memory of the worker, its forked job processes included (--processes).
    assert value(after, "clarity_worker_resident_memory_bytes") > 10 * 2**20
    assert value(after, "clarity_worker_cpu_seconds_total") > 0
    # With --processes: the worker, its two job processes and Huey's scheduler process.
    assert value(after, "clarity_worker_processes") == (1 if mode == "threads" else 4)

    # Queue gauges are read at scrape time: pause, enqueue, and the waiting count moves.
    QueueManager().pause("sync")
    enqueue("sync", "record", {"n": 10}, priority="HIGH")
    enqueue("sync", "record", {"n": 11}, priority="LOW")
    enqueue("sync", "record", {"n": 12}, delay=3600)
    s = scrape(_url(port, "/metrics"))
    assert value(s, "clarity_jobs", queue="sync", state="waiting", priority="high") == 1
    assert value(s, "clarity_jobs", queue="sync", state="waiting", priority="low") == 1
    assert value(s, "clarity_jobs", queue="sync", state="waiting") == 2
    assert value(s, "clarity_jobs", queue="sync", state="delayed") == 1
    assert value(s, "clarity_queue_paused", queue="sync") == 1
    assert value(s, "clarity_jobs", queue="email", state="waiting") == 0
    QueueManager().resume("sync")

    # /status reflects the same counts.
    code, status = get_json(_url(port, "/status"))
    assert code == 200
    assert status["queues"] == ["sync"] and status["mode"] == mode
    wait_for(lambda: get_json(_url(port, "/status"))[1]["processed"] == 6,
             message="status shows 6 processed")
    assert get_json(_url(port, "/status"))[1]["failed"] == 1


def test_status_lists_running_jobs_with_their_running_time(env, workers):
    port = free_port()
    workers(concurrency=2, health_check_port=port)
    wait_for(lambda: _healthy(port), message="worker healthy")
    job = enqueue("sync", "record", {"n": 1, "sleep": 3})
    wait_for(lambda: recorded("started"), message="job started")

    def running():
        status = get_json(_url(port, "/status"))[1]
        jobs = status["activeJobs"]
        return status if jobs and jobs[0]["runningSeconds"] >= 0.5 else None

    status = wait_for(running, timeout=5, message="job shown as running")
    assert status["activeJobs"][0]["id"] == job.id
    assert status["activeJobs"][0]["task"] == "record"
    assert status["activeJobCount"] == 1
    assert status["redis"]["up"] is True and status["redis"]["roundtripMs"] > 0
    assert "password" not in str(status).lower()
    assert value(scrape(_url(port, "/metrics")), "clarity_worker_active_jobs") == 1
    for key in ("worker", "concurrency", "uptimeSeconds", "version", "processed", "failed"):
        assert key in status


def test_health_turns_503_when_redis_stops_and_200_when_it_returns(configure, workers,
                                                                   redis_factory):
    server = configure(redis_factory())
    port = free_port()
    workers(server=server, health_check_port=port)
    wait_for(lambda: _healthy(port), message="worker healthy")
    server.stop()
    _code, doc = wait_for(lambda: (r := get_json(_url(port, "/health")))[0] == 503 and r,
                         timeout=5, message="503 after Redis stopped")
    assert doc["status"] == "unhealthy"
    assert doc["checks"]["redis"]["ok"] is False
    assert "Redis" in doc["reason"]
    assert doc["checks"]["consumer"]["ok"] is True
    metrics = scrape(_url(port, "/metrics"))
    assert value(metrics, "clarity_redis_up") == 0
    assert not has(metrics, "clarity_jobs")  # no stale depths while Redis is away

    server.start()
    wait_for(lambda: _healthy(port), timeout=10, message="200 after Redis returned")
    enqueue("sync", "record", {"n": "after"})
    wait_for(lambda: recorded("done") == ["after"], message="job after Redis returned")


def test_health_port_follows_the_queue_unless_set(env):
    from worker.health import QUEUE_PORTS, health_port
    from worker.settings import load_settings

    settings = load_settings()
    assert health_port(settings, ["email", "sync"]) == 9102
    assert [QUEUE_PORTS[q] for q in ("sync", "email", "cleanup", "webhook", "notifications")] \
        == [9101, 9102, 9103, 9104, 9105]
    assert health_port(load_settings(health_check_port=0), ["sync"]) == 0
    assert health_port(load_settings(health_check_port=9300), ["sync"]) == 9300


def test_worker_started_before_redis_waits_then_runs_jobs_without_a_restart(
        configure, redis_factory, workers):
    # A rack power cycle: the workers boot before Redis has loaded its data.
    server = configure(redis_factory("late", start=False))
    port = free_port()
    worker = workers(server=server, health_check_port=port, health_check_host="127.0.0.1")
    code, doc = wait_for(lambda: (r := get_json(_url(port, "/health")))[1] is not None and r,
                         message="the health server answering while Redis is down")
    assert code == 503
    assert "waiting for Redis" in doc["reason"]
    wait_for(lambda: worker.proc.poll() is None and "waits, next try" in
             (worker.child.log.read_text()), message="the worker logging that it waits")
    assert worker.proc.poll() is None  # still running: nothing for a start limit to count

    server.start()
    wait_for(lambda: _healthy(port), timeout=30, message="healthy once Redis answers")
    enqueue("sync", "record", {"n": "after"})
    wait_for(lambda: recorded("done") == ["after"], message="a job run by the same process")
    assert worker.proc.poll() is None
