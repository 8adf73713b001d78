"""High availability figures, on real processes on this machine:

* single-producer enqueue rate with WAIT (acknowledged once a replica has the job) vs
  without, same Sentinel group, same run;
* failover time: the primary SIGKILLed under load -> a new primary named -> the first job
  leased from it (a worker running), and the acknowledged jobs lost (must be 0);
* restore time of a backup of `--restore-jobs` waiting jobs (redis/clarity-redis-restore,
  then Redis loading it).

    .venv/bin/python -m bench.ha_bench [--seconds 5] [--restore-jobs 1000000] [--json out]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from app.devstack.processes import Child, real_clock_env
from app.devstack.redis_server import RedisServer
from app.devstack.sentinel import SentinelGroup
from bench import record

SECRET = "bench-signing-secret-0123456789abcdef"


def settings_env(extra: dict) -> None:
    os.environ.update({"JOB_SIGNING_SECRET": SECRET, "TASK_MODULES": "bench.tasks",
                       "REDIS_KEY_PREFIX": "ha", "CLARITY_ENV_FILE": "/nonexistent.env",
                       "LOG_LEVEL": "WARNING", **extra})
    from worker import hueys
    from worker.settings import reset_settings_cache

    reset_settings_cache()
    hueys.reset_caches()


def enqueue_rate(seconds: float, wait_replicas: int) -> float:
    settings_env({"REDIS_WAIT_REPLICAS": str(wait_replicas)})
    from worker.producer import enqueue

    n, end = 0, time.perf_counter() + seconds
    started = time.perf_counter()
    while time.perf_counter() < end:
        enqueue("sync", "noop", {"n": n})
        n += 1
    return n / (time.perf_counter() - started)


def failover(group: SentinelGroup, workdir: Path) -> dict:
    settings_env({"REDIS_WAIT_REPLICAS": "1"})
    from worker.connections import redis_client
    from worker.producer import enqueue

    env = {**os.environ, "PYTHONPATH": str(REPO), "HEALTH_CHECK_PORT": "0"}
    worker = Child("worker", [sys.executable, "-m", "app", "worker", "-q", "sync", "-c", "4",
                              "--no-periodic"], workdir / "worker.log", env, cwd=REPO).start()
    acknowledged, stop = [], threading.Event()

    def produce():
        n = 0
        while not stop.is_set():
            try:
                enqueue("sync", "mark", {"n": n})
                acknowledged.append(str(n))
            except Exception:  # noqa: BLE001 - refused during the failover: not acknowledged
                time.sleep(0.02)
            n += 1

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    time.sleep(3)
    old = group.nodes[0]
    killed = time.monotonic()
    old.kill()
    while (port := group.primary_port()) in (None, old.port):
        time.sleep(0.05)
    promoted = time.monotonic() - killed
    client = redis_client()
    start_len = _marks(client)
    while len(start_len) and len(_marks(client)) <= len(start_len):
        time.sleep(0.02)
    running = time.monotonic() - killed
    time.sleep(2)
    stop.set()
    thread.join(10)
    deadline = time.monotonic() + 60
    while not set(acknowledged) <= set(_marks(client)) and time.monotonic() < deadline:
        time.sleep(0.2)
    lost = len(set(acknowledged) - set(_marks(client)))
    worker.stop(timeout=20)
    return {"failoverPromotedSeconds": round(promoted, 2),
            "failoverFirstJobSeconds": round(running, 2),
            "acknowledged": len(acknowledged), "acknowledgedLost": lost, "newPrimaryPort": port}


def _marks(client) -> list[str]:
    try:
        return [m.decode() for m in client.lrange("bench:marks", 0, -1)]
    except Exception:  # noqa: BLE001 - Redis between primaries
        return []


def restore_time(jobs: int, workdir: Path) -> dict:
    server = RedisServer(workdir / "restore", extra=("--appendonly", "yes"),
                         maxmemory="8gb").start()
    settings_env({**server.env, "REDIS_WAIT_REPLICAS": "0"})
    from worker.producer import JobRequest, enqueue_many

    loaded = time.perf_counter()
    for start in range(0, jobs, 20_000):
        enqueue_many([JobRequest("sync", "noop", {"user_id": start + i})
                      for i in range(min(20_000, jobs - start))], chunk_size=1000)
    loaded = time.perf_counter() - loaded
    backups = workdir / "backups"
    env = {**real_clock_env(), "REDIS_PORT": str(server.port), "REDISCLI_AUTH": server.password,
           "BACKUP_DIR": str(backups), "TEXTFILE_DIR": ""}
    started = time.perf_counter()
    subprocess.run([str(REPO / "redis" / "clarity-redis-backup")], env=env, check=True,
                   capture_output=True, timeout=3600)
    backup_s = time.perf_counter() - started
    rdb = next(backups.glob("dump-*.rdb"))
    server.stop()
    for item in server.dir.iterdir():
        if item.name not in ("redis.conf", "redis.log"):
            shutil.rmtree(item) if item.is_dir() else item.unlink()
    started = time.perf_counter()
    subprocess.run([str(REPO / "redis" / "clarity-redis-restore"), str(rdb), str(server.dir)],
                   env=real_clock_env(), check=True, capture_output=True, timeout=3600)
    server.start(timeout=3600)
    restore_s = time.perf_counter() - started
    waiting = server.client().zcard("ha:{sync}:waiting")
    server.stop()
    return {"restoreJobs": jobs, "restoredWaiting": waiting, "loadSeconds": round(loaded, 1),
            "backupSeconds": round(backup_s, 1), "restoreSeconds": round(restore_s, 1),
            "backupBytes": rdb.stat().st_size}


def main() -> None:
    record.begin()
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--restore-jobs", type=int, default=1_000_000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="clarity-ha-bench-"))
    results = {"load": os.getloadavg()[0]}
    group = SentinelGroup(workdir / "ha").start()
    try:
        os.environ.update(group.env)
        results["enqueuePerSecondWithWait"] = round(enqueue_rate(args.seconds, 1))
        results["enqueuePerSecondWithoutWait"] = round(enqueue_rate(args.seconds, 0))
        results["waitCostRatio"] = round(results["enqueuePerSecondWithWait"]
                                         / results["enqueuePerSecondWithoutWait"], 2)
        results.update(failover(group, workdir))
    finally:
        group.stop()
    for key in group.env:
        os.environ.pop(key, None)
    if args.restore_jobs:
        results.update(restore_time(args.restore_jobs, workdir))
    results["loadAfter"] = os.getloadavg()[0]
    print(json.dumps(results, indent=2))
    record.save("ha", results, path=args.json)
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
