"""The CLI: clear errors, and the worker's periodic-task lock."""

import datetime as dt
import os
import subprocess
import sys

from app.devstack import REPO
from worker.hueys import get_huey


def run_cli(*args, env=None):
    full_env = {**os.environ, "CLARITY_ENV_FILE": "/nonexistent.env", **(env or {})}
    return subprocess.run([sys.executable, "-m", "app", *args], capture_output=True, text=True,
                          env=full_env, cwd=REPO, timeout=60, check=False)


def test_missing_secret_stops_with_a_message_naming_the_variable():
    env = {k: v for k, v in os.environ.items() if k != "JOB_SIGNING_SECRET"}
    env["CLARITY_ENV_FILE"] = "/nonexistent.env"
    result = subprocess.run([sys.executable, "-m", "app", "stats"], capture_output=True,
                            text=True, env=env, cwd=REPO, timeout=60, check=False)
    assert result.returncode != 0
    assert "JOB_SIGNING_SECRET: is required" in result.stderr
    assert "Traceback" not in result.stderr


def test_unreachable_redis_says_where_and_what_to_check():
    result = run_cli("stats", env={"JOB_SIGNING_SECRET": "s" * 32, "REDIS_PORT": "1",
                                   "REDIS_PASSWORD": "pw-not-to-print"})
    assert result.returncode == 1
    assert "cannot reach Redis at redis://127.0.0.1:1/0" in result.stderr
    assert "pw-not-to-print" not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


def test_enqueue_bad_priority_is_a_usage_error(env):
    result = run_cli("enqueue", "sync", "ping", "{}", "--priority", "42",
                     env={k: os.environ[k] for k in ("REDIS_PORT", "REDIS_PASSWORD",
                                                     "JOB_SIGNING_SECRET")})
    assert result.returncode == 2
    assert "priority" in result.stderr and "between 1 and 10" in result.stderr


def test_enqueue_and_wait_through_a_real_worker(env, workers):
    workers()
    result = run_cli("enqueue", "sync", "ping", '{"echo": "cli"}', "--wait", "15",
                     env={k: os.environ[k] for k in ("REDIS_PORT", "REDIS_PASSWORD",
                                                     "JOB_SIGNING_SECRET", "REDIS_KEY_PREFIX")})
    assert result.returncode == 0, result.stderr
    assert '"state": "completed"' in result.stdout


def test_worker_help_explains_signals():
    result = run_cli("worker", "--help", env={"JOB_SIGNING_SECRET": "s" * 32})
    assert result.returncode == 0
    assert "SIGINT or SIGTERM stop gracefully" in result.stdout


def test_periodic_tasks_fire_once_per_tick_across_the_fleet(env):
    from worker.registry import _SPECS, load_task_modules

    load_task_modules()
    periodic = [spec for spec in _SPECS.values() if spec.periodic]
    assert periodic, "no periodic task declared"
    spec = periodic[0]
    day = dt.datetime(2026, 11, 28)
    ticks = [t for t in (day + dt.timedelta(minutes=m) for m in range(24 * 60))
             if spec.schedule(t)]
    first = get_huey(spec.queue, consumer_id="host-a").read_periodic(ticks[0])
    second = get_huey(spec.queue, consumer_id="host-b").read_periodic(ticks[0])
    assert spec.name in [t.name for t in first]
    assert second == []
    later = get_huey(spec.queue, consumer_id="host-b").read_periodic(ticks[1])
    assert spec.name in [t.name for t in later]


def test_processes_with_several_queues_is_refused_with_what_to_run_instead():
    result = run_cli("worker", "-q", "sync", "-q", "email", "--processes",
                     env={"JOB_SIGNING_SECRET": "s" * 32})
    assert result.returncode == 2
    assert "one queue per worker process" in result.stderr
    assert "clarity-worker@<queue>" in result.stderr


def test_one_worker_serves_several_queues_with_threads(env, workers):
    from tests.helpers import recorded, wait_for
    from worker.producer import enqueue

    workers(queues=("email", "notifications"), concurrency=2)
    enqueue("email", "record", {"n": "e"})
    enqueue("notifications", "record", {"n": "n"})
    wait_for(lambda: sorted(recorded("done")) == ["e", "n"], message="both queues served")


def test_top_shows_depths_rates_latency_and_workers(env, workers):
    """`clarity top` (the view `clarity up` shows too): from Redis alone."""
    from tests.helpers import recorded, wait_for
    from worker.management import QueueManager
    from worker.producer import enqueue

    workers(name="top-worker", queues=("sync",), extra_args=("--name", "top-worker"))
    for i in range(4):
        enqueue("sync", "record", {"n": i})
    enqueue("email", "record", {"n": "waits"})
    wait_for(lambda: len(recorded("done")) == 4, message="four jobs to run")
    wait_for(lambda: any(w["alive"] for w in QueueManager().workers()), message="heartbeat")
    keys = ("REDIS_PORT", "REDIS_PASSWORD", "JOB_SIGNING_SECRET", "REDIS_KEY_PREFIX")

    def shown():
        out = run_cli("top", "--once", env={**{k: os.environ[k] for k in keys},
                                            "COLUMNS": "160"})
        assert out.returncode == 0, out.stderr
        return out.stdout if "0.8" in out.stdout else None  # 4 done / 5 minutes

    text = wait_for(shown, timeout=15, interval=0.5, message="the rate to show")
    for word in ("sync", "email", "waiting", "pickup p50", "top-worker", "Redis memory"):
        assert word in text, word
    email = next(line for line in text.splitlines() if line.strip("│ ").startswith("email"))
    assert " 1 " in email  # one waiting
