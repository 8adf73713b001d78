"""Clarity queue core vs plain Huey (PriorityRedisHuey), same machine, same Redis, same run.

    .venv/bin/python -m bench.queue_bench [--jobs 20000] [--rate 200] [--seconds 10] [--runs 3]

Measures, for both: single-producer enqueue rate, drain rate with 2 worker processes, pickup
latency p50/p99 at a steady rate, and Redis round trips (commands seen by MONITOR) per job
for enqueue and for lease+ack; plus our bulk enqueue rate and the CPU per enqueued job (this
process's and Redis's, which barely move with the machine's load). Prints ratios ours/Huey,
medians of --runs runs.
"""

from __future__ import annotations

import argparse
import collections
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from app.devstack.redis_server import RedisServer
from bench import record

SECRET = "bench-signing-secret-0123456789abcdef"


def env_for(server: RedisServer) -> dict[str, str]:
    return {**os.environ, **server.env, "JOB_SIGNING_SECRET": SECRET, "TASK_MODULES": "bench.tasks",
            "REDIS_KEY_PREFIX": "bench", "LOG_LEVEL": "WARNING", "PYTHONPATH": str(REPO),
            "CLARITY_ENV_FILE": "/nonexistent.env", "HEALTH_CHECK_PORT": "0"}


def start_ours(env, processes=2):
    return subprocess.Popen([sys.executable, "-m", "app", "worker", "-q", "sync", "--processes",
                             "-c", str(processes), "--no-periodic", "--log-format", "json"],
                            env=env, cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


def start_huey(env, processes=2):
    return subprocess.Popen([str(Path(sys.executable).parent / "huey_consumer"),
                             "bench.tasks.huey", "-k", "process", "-w", str(processes), "-q"],
                            env=env, cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


def stop(proc):
    try:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def wait_drained(size_fn, total, timeout=300):
    """Seconds from the first job taken to an empty queue, and the jobs drained in that time."""
    deadline = time.monotonic() + timeout
    while size_fn() >= total:
        if time.monotonic() > deadline:
            raise RuntimeError("workers never started")
        time.sleep(0.002)
    t0, start_size = time.perf_counter(), size_fn()
    while size_fn() > 0:
        if time.monotonic() > deadline:
            raise RuntimeError("drain timed out")
        time.sleep(0.005)
    return time.perf_counter() - t0, start_size


class Ours:
    name = "clarity"

    def __init__(self, server):
        os.environ.update(env_for(server))
        from worker import hueys
        from worker.settings import reset_settings_cache

        reset_settings_cache()
        hueys.reset_caches()
        from worker.management import QueueManager
        from worker.producer import enqueue, enqueue_many

        self.enqueue, self.enqueue_many = enqueue, enqueue_many
        self.manager = QueueManager()
        self.server = server

    def enqueue_one(self, i):
        self.enqueue("sync", "noop", {"i": i})

    def latency_one(self):
        self.enqueue("sync", "latency", {"t": time.time()})

    def pending(self):
        c = self.manager.counts("sync")
        return c["waiting"] + c["active"]

    def pending_with(self, client):
        k = self.manager.keys("sync")
        return client.zcard(k.waiting) + client.zcard(k.active)

    def start(self, env, processes=2):
        return start_ours(env, processes)

    def bulk(self, n):
        from worker.producer import JobRequest

        reqs = [JobRequest("sync", "noop", {"i": i}) for i in range(n)]
        t = time.perf_counter()
        self.enqueue_many(reqs)
        return n / (time.perf_counter() - t)


class PlainHuey:
    name = "huey"

    def __init__(self, server):
        from bench import tasks

        tasks.huey.storage.conn.connection_pool.disconnect()
        self.tasks = tasks
        self.storage = tasks.huey.storage

    def enqueue_one(self, i):
        self.tasks.huey_noop()

    def latency_one(self):
        self.tasks.huey_latency(time.time())

    def pending(self):
        return self.storage.queue_size()

    def pending_with(self, client):
        return client.zcard(self.storage.queue_key)

    def start(self, env, processes=2):
        return start_huey(env, processes)


def redis_cpu(client) -> float:
    info = client.info("cpu")
    return info["used_cpu_user"] + info["used_cpu_sys"]


def measure_enqueue(system, n, client):
    """Jobs/s, and the CPU microseconds per job spent by this process and by Redis: CPU
    time barely moves with the machine's load, where jobs/s does."""
    for i in range(200):  # warm: connections made, code paths run once
        system.enqueue_one(i)
    cpu0, server0, t = time.process_time(), redis_cpu(client), time.perf_counter()
    for i in range(n):
        system.enqueue_one(i)
    elapsed = time.perf_counter() - t
    return {"per_s": n / elapsed,
            "client_cpu_us": (time.process_time() - cpu0) / n * 1e6,
            "redis_cpu_us": (redis_cpu(client) - server0) / n * 1e6}


def measure_drain(system, env, n, processes=2):
    proc = system.start(env, processes)
    try:
        seconds, drained = wait_drained(system.pending, n)
    finally:
        stop(proc)
    return drained / seconds


def measure_latency(system, env, client, rate, seconds):
    client.delete("bench:latency")
    proc = system.start(env)
    try:
        # Warm up: both systems' workers must be up and past their first jobs before timing.
        for _ in range(20):
            system.latency_one()
        deadline = time.monotonic() + 60
        while client.llen("bench:latency") < 20 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        client.delete("bench:latency")
        interval, count = 1.0 / rate, int(rate * seconds)
        next_at = time.perf_counter()
        for _ in range(count):
            system.latency_one()
            next_at += interval
            pause = next_at - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
        deadline = time.monotonic() + 30
        while client.llen("bench:latency") < count and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop(proc)
    values = sorted(float(v) * 1000 for v in client.lrange("bench:latency", 0, -1))
    return {"p50_ms": statistics.median(values), "p99_ms": values[int(len(values) * 0.99) - 1],
            "samples": len(values)}


def count_round_trips(server, action, n, exclude_addr=None):
    """Commands clients sent (not those Lua ran) while `action` runs, per job. The bench's
    own polling connection (`exclude_addr`) is left out."""
    import threading

    seen = collections.Counter()
    client = server.client()
    monitor = client.monitor()
    monitor.connection.send_command("MONITOR")
    monitor.connection.read_response()
    stop = threading.Event()

    def listen():
        while not stop.is_set():
            try:
                info = monitor.next_command()
            except Exception:  # noqa: BLE001 - the connection is closed to stop us
                return
            addr = f"{info.get('client_address')}:{info.get('client_port')}"
            if info.get("client_type") == "lua" or addr == exclude_addr:
                continue
            cmd = info["command"].split(" ", 1)[0].upper()
            seen[cmd] += 1

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    time.sleep(0.2)
    action()
    time.sleep(0.5)
    stop.set()
    monitor.connection.disconnect()
    thread.join(2)
    for noise in ("MONITOR", "AUTH", "HELLO", "CLIENT", "PING", "INFO"):
        seen.pop(noise, None)
    return {"per_job": round(sum(seen.values()) / n, 2), "commands": dict(seen.most_common(8))}


def main():
    record.begin()
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=20000)
    parser.add_argument("--rate", type=int, default=200, help="jobs/s for the latency test")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--runs", type=int, default=3,
                        help="repeat enqueue, drain and latency this often; medians reported")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    server = RedisServer(Path(tempfile.mkdtemp(prefix="clarity-bench-"))).start()
    try:
        env = env_for(server)
        os.environ.update(env)
        client = server.client()
        ours, huey = Ours(server), PlainHuey(server)
        results = {"jobs": args.jobs, "runs": args.runs}
        raw = collections.defaultdict(list)
        for run in range(1, args.runs + 1):
            for system in (huey, ours):
                name = system.name
                print(f"[{name} {run}/{args.runs}] enqueue {args.jobs} jobs, one at a time...",
                      flush=True)
                for key, value in measure_enqueue(system, args.jobs, client).items():
                    raw[f"{name}_enqueue_{key}"].append(value)
                print(f"[{name} {run}/{args.runs}] drain with 2 worker processes...", flush=True)
                raw[f"{name}_drain_per_s"].append(measure_drain(system, env, args.jobs))
                print(f"[{name} {run}/{args.runs}] enqueue again, drain with 1 worker "
                      "process...", flush=True)
                for i in range(args.jobs):
                    system.enqueue_one(i)
                raw[f"{name}_drain1_per_s"].append(measure_drain(system, env, args.jobs, 1))
                print(f"[{name} {run}/{args.runs}] pickup latency at {args.rate} jobs/s...",
                      flush=True)
                latency = measure_latency(system, env, client, args.rate, args.seconds)
                raw[f"{name}_latency_p50_ms"].append(latency["p50_ms"])
                raw[f"{name}_latency_p99_ms"].append(latency["p99_ms"])
        # Medians of the runs; every run's figure is kept beside them.
        for key, values in raw.items():
            results[key] = statistics.median(values)
            results[key + "_runs"] = [round(v, 3) for v in values]
        for name in ("clarity", "huey"):
            results[f"{name}_latency"] = {"p50_ms": results[f"{name}_latency_p50_ms"],
                                          "p99_ms": results[f"{name}_latency_p99_ms"]}
        print("[clarity] bulk enqueue...", flush=True)
        results["clarity_bulk_enqueue_per_s"] = ours.bulk(args.jobs)
        ours.manager.clear("sync", "waiting")

        print("round trips (MONITOR)...", flush=True)
        n = 200
        for system in (huey, ours):
            results[f"{system.name}_enqueue_round_trips"] = count_round_trips(
                server, lambda s=system: [s.enqueue_one(i) for i in range(n)], n)
            proc = system.start(env)
            time.sleep(2.0)  # idle workers: their background traffic is counted, once
            poller = server.client(single_connection_client=True)
            poller_addr = poller.client_info()["addr"]

            def drain(s=system, poller=poller):
                [s.enqueue_one(i) for i in range(n)]
                deadline = time.monotonic() + 60
                while s.pending_with(poller) and time.monotonic() < deadline:
                    time.sleep(0.01)

            results[f"{system.name}_drain_round_trips"] = count_round_trips(
                server, drain, n, exclude_addr=poller_addr)
            stop(proc)
            # A backlog: the jobs wait before the workers start, so a worker settles one
            # job and takes the next in the same call (start-up traffic is included).
            backlog = 10 * n
            for i in range(backlog):
                system.enqueue_one(i)

            def drain_backlog(s=system, poller=poller):
                started = s.start(env)
                deadline = time.monotonic() + 120
                while s.pending_with(poller) and time.monotonic() < deadline:
                    time.sleep(0.01)
                stop(started)

            results[f"{system.name}_backlog_round_trips"] = count_round_trips(
                server, drain_backlog, backlog, exclude_addr=poller_addr)
    finally:
        server.stop()

    r = results
    print()
    print(f"{'':34}{'clarity':>12}{'huey':>12}{'ratio':>8}")
    for label, key in (("enqueue, 1 producer (jobs/s)", "enqueue_per_s"),
                       ("drain, 2 processes (jobs/s)", "drain_per_s"),
                       ("drain, 1 process (jobs/s)", "drain1_per_s")):
        a, b = r[f"clarity_{key}"], r[f"huey_{key}"]
        print(f"{label:34}{a:12.0f}{b:12.0f}{a / b:8.2f}")
    for q in ("p50_ms", "p99_ms"):
        a, b = r["clarity_latency"][q], r["huey_latency"][q]
        print(f"{'pickup latency ' + q + ' @' + str(args.rate) + '/s':34}{a:12.2f}{b:12.2f}")
    for label, key in (("enqueue CPU, client (us/job)", "enqueue_client_cpu_us"),
                       ("enqueue CPU, Redis (us/job)", "enqueue_redis_cpu_us")):
        a, b = r[f"clarity_{key}"], r[f"huey_{key}"]
        print(f"{label:34}{a:12.1f}{b:12.1f}{a / b:8.2f}")
    print(f"{'bulk enqueue (jobs/s)':34}{r['clarity_bulk_enqueue_per_s']:12.0f}")
    print(f"medians of {args.runs} run(s); load average at the end: "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print("round trips include enqueue commands in the drain row (jobs arriving one by one "
          "for idle workers), not in the backlog row (jobs waiting before the workers "
          "start); background traffic (heartbeats, scheduler) is included in both")
    for key in ("enqueue_round_trips", "drain_round_trips", "backlog_round_trips"):
        print(f"{key.replace('_', ' ') + ' per job':34}{r['clarity_' + key]['per_job']:12}"
              f"{r['huey_' + key]['per_job']:12}")
        print(f"   clarity {r['clarity_' + key]['commands']}\n   huey    {r['huey_' + key]['commands']}")
    record.save("queue", results, path=args.json)


if __name__ == "__main__":
    main()
