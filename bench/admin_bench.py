"""Admin API under load, through the production path: wrk → nginx (TLS) → gunicorn → app →
Redis holding 1,000,000 waiting jobs over the five queues and 100,000 failed ones.

    .venv/bin/python -m bench.admin_bench [--waiting 1000000] [--failed 100000]
        [--seconds 20] [--connections 16] [--page-connections 4]
        [--rate 1000] [--paced-connections 64] [--gunicorn-workers 2] [--threads 4]

Targets (issue 5): overview p99 <= 25 ms and >= 1,000 requests/s with auth on (the p99 of a
run paced to --rate requests/s, the throughput of an unpaced one); a failed-jobs
page of 50 p99 <= 50 ms (pages at a few operators' concurrency, and again at the overview's).
The app's rate limit is raised out of the way through its own
settings (ADMIN_RATE_LIMIT) and nginx's through the template's variables; authentication,
the Redis-backed rate-limit counter and the security headers all stay on. The overview is
measured twice: with the app's per-process overview cache (OVERVIEW_CACHE_SECONDS, 0.5 s by
default) and with it off, so every request reads Redis. Results: bench/results/admin.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from app.devstack.redis_server import RedisServer
from app.devstack.web import WebStack
from bench import record

SECRET = "bench-signing-secret-0123456789abcdef"
ADMIN_KEY = "bench-admin-key-0123456789abcdef"
LUA = REPO / "bench" / "admin_report.lua"
QUEUES = ("sync", "email", "cleanup", "webhook", "notifications")


def app_env(server: RedisServer, **extra) -> dict[str, str]:
    env = {**server.env, "JOB_SIGNING_SECRET": SECRET, "REDIS_KEY_PREFIX": "bench",
           "ADMIN_API_KEYS": f"bench:{ADMIN_KEY}", "LOG_LEVEL": "WARNING",
           "ADMIN_RATE_LIMIT": "100000000 per 15 minutes", "CLARITY_ENV_FILE": "/nonexistent.env",
           # No worker recycling mid-run: a restart stalls its queued requests for a second.
           "GUNICORN_MAX_REQUESTS": "0",
           "STATE_DIR": tempfile.mkdtemp(prefix="clarity-bench-state-")}
    env.update(extra)
    return env


def load(server: RedisServer, waiting: int, failed: int) -> dict:
    """Fill Redis through the real producer (enqueue_many) and the real storage (lease, then
    settle as failed), the same paths production uses."""
    os.environ.update(app_env(server))
    from worker import connections, hueys
    from worker.management import QueueManager
    from worker.producer import JobRequest, enqueue_many
    from worker.settings import get_settings, reset_settings_cache
    from worker.storage import ReliableRedisStorage, Settlement

    reset_settings_cache()
    hueys.reset_caches()
    settings = get_settings()
    started = time.perf_counter()
    per_queue_failed = failed // len(QUEUES)
    pool = connections.connection_pool(settings)
    for queue in QUEUES:
        batch = [JobRequest(queue, "ping", {"echo": f"f{i}", "note": "x" * 60})
                 for i in range(per_queue_failed)]
        enqueue_many(batch, settings=settings, chunk_size=1000)
        storage = ReliableRedisStorage(queue, prefix=settings.redis_key_prefix,
                                       connection_pool=pool, consumer_id="bench-loader")
        pending = []
        while leases := storage.lease_batch(1000):
            pending.extend(Settlement(
                "fail", lease, reason="error", error_type="RuntimeError",
                error="upstream said no", attempts=3,
                traceback="Traceback (most recent call last):\n  File \"sync.py\", line 42, "
                          "in sync_user\nRuntimeError: upstream said no") for lease in leases)
            storage.settle(pending)
            pending = []
    failed_s = time.perf_counter() - started
    started = time.perf_counter()
    priorities = ("low", "normal", "high", "critical")
    chunk = 20_000
    for start in range(0, waiting, chunk):
        n = min(chunk, waiting - start)
        enqueue_many([JobRequest(QUEUES[(start + i) % len(QUEUES)], "ping",
                                 {"echo": start + i, "account": f"acct-{(start + i) % 9973}"},
                                 priorities[(start + i) % 4]) for i in range(n)],
                     settings=settings, chunk_size=1000)
    waiting_s = time.perf_counter() - started
    counts = QueueManager(settings).counts_all()
    info = connections.redis_client(settings).info("memory")
    return {"failed_load_s": round(failed_s, 1), "waiting_load_s": round(waiting_s, 1),
            "waiting": sum(c["waiting"] for c in counts.values()),
            "failed": sum(c["failed"] for c in counts.values()),
            "redis_used_memory_mb": round(info["used_memory"] / 2**20)}


def _tree(pid: int) -> list[int]:
    """pid and its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def cpu_seconds(pids: list[int]) -> float:
    """User+system CPU time of these processes (clock ticks from /proc/<pid>/stat)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU spent by gunicorn, nginx and Redis during a run: the cost of one request on this
    machine whatever else runs on it (the wall-clock figures depend on a quiet machine)."""

    def __init__(self, stack: WebStack, redis_pid: int):
        self.groups = {"gunicorn": _tree(stack.gunicorn.pid), "nginx": _tree(stack.nginx.pid),
                       "redis": [redis_pid]}

    def __enter__(self):
        self.before = {k: cpu_seconds(v) for k, v in self.groups.items()}
        return self

    def per_request_ms(self, requests: int) -> dict:
        after = {k: cpu_seconds(v) for k, v in self.groups.items()}
        out = {k: round((after[k] - self.before[k]) * 1000 / max(requests, 1), 3)
               for k in self.groups}
        out["total"] = round(sum(out.values()), 3)
        return out

    def __exit__(self, *exc):
        return False


def wrk(url: str, seconds: int, connections: int, threads: int = 2, pages: str = "",
        rate: int = 0) -> dict:
    """wrk's results as a dict. `rate` (requests/s, 0: as fast as it goes) paces the
    connections: each waits between its requests, so the latency measured is a request's at
    that load. Unpaced, wrk keeps every connection busy and its latency is the queue's:
    connections / throughput by Little's law, whatever one request costs."""
    if not rate:
        return _wrk(url, seconds, connections, threads, pages, 0)
    # wrk waits whole milliseconds after each response, so a connection's period is that
    # wait plus the response time: measure the response time at about this load first,
    # then wait what is left of the period (rounded down: the rate is reached, not missed).
    period_ms = connections * 1000 / rate
    probe = _wrk(url, 5, connections, threads, pages, max(1, int(period_ms) - 3))
    delay_ms = max(1, int(period_ms - probe["mean_ms"]) - 1)
    return {**_wrk(url, seconds, connections, threads, pages, delay_ms), "delay_ms": delay_ms}


def _wrk(url, seconds, connections, threads, pages, delay_ms) -> dict:
    env = {**os.environ, "WRK_AUTH": ADMIN_KEY, "WRK_PAGES": pages,
           "WRK_DELAY_MS": str(delay_ms)}
    out = subprocess.run(["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{seconds}s",
                          "--timeout", "5s", "-s", str(LUA), url],
                         env=env, capture_output=True, text=True, check=True).stdout
    line = [x for x in out.splitlines() if x.startswith("{")][-1]
    return json.loads(line)


def run_stack(server, workdir, args, cache_seconds: str, name: str, results: dict):
    env = app_env(server, OVERVIEW_CACHE_SECONDS=cache_seconds)
    stack = WebStack(workdir / name, env, gunicorn_workers=args.gunicorn_workers,
                  gunicorn_threads=args.threads, nginx_workers=1,
                  nginx_vars={"nginx_admin_rate": "100000r/s", "nginx_admin_burst": 100000})
    stack.start()
    try:
        base = f"https://localhost:{stack.https_port}"
        wrk(base + "/api/admin/queue?action=overview", 3, args.connections)  # warm up
        with CpuMeter(stack, server.proc.pid) as meter:
            results[f"overview_{name}"] = wrk(base + "/api/admin/queue?action=overview",
                                              args.seconds, args.connections)
            results[f"overview_{name}"]["cpu_ms_per_request"] = meter.per_request_ms(
                results[f"overview_{name}"]["requests"])
        print(f"overview ({name}): {results[f'overview_{name}']}", flush=True)
        if name == "uncached":
            # The target's question: how long does a request take while 1,000 a second
            # arrive? (The unpaced run above answers how many go through at most.)
            with CpuMeter(stack, server.proc.pid) as meter:
                paced = wrk(base + "/api/admin/queue?action=overview", args.seconds,
                            args.paced_connections, rate=args.rate)
                paced["cpu_ms_per_request"] = meter.per_request_ms(paced["requests"])
            results["overview_uncached_paced"] = paced
            print(f"overview ({name}, paced to {args.rate} req/s over "
                  f"{args.paced_connections} connections): {paced}", flush=True)
            pages = f"{','.join(QUEUES)}:{args.failed // len(QUEUES)}:50"
            with CpuMeter(stack, server.proc.pid) as meter:
                results["failed_page_50"] = wrk(base + "/api/admin/queue", args.seconds,
                                                args.page_connections, pages=pages)
                results["failed_page_50"]["cpu_ms_per_request"] = meter.per_request_ms(
                    results["failed_page_50"]["requests"])
            print(f"failed-jobs page of 50 ({args.page_connections} connections): "
                  f"{results['failed_page_50']}", flush=True)
            results["failed_page_50_busy"] = wrk(base + "/api/admin/queue", args.seconds,
                                                 args.connections, pages=pages)
            print(f"failed-jobs page of 50 ({args.connections} connections): "
                  f"{results['failed_page_50_busy']}", flush=True)
    finally:
        stack.stop()


def main() -> int:
    record.begin()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--waiting", type=int, default=1_000_000)
    parser.add_argument("--failed", type=int, default=100_000)
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--connections", type=int, default=16,
                        help="wrk connections for the overview (and the busy page run)")
    parser.add_argument("--page-connections", type=int, default=4,
                        help="wrk connections for the failed-jobs pages (a few operators)")
    parser.add_argument("--rate", type=int, default=1000,
                        help="requests/s of the paced uncached-overview run (the target's load)")
    parser.add_argument("--paced-connections", type=int, default=64,
                        help="wrk connections the paced run spreads that rate over")
    parser.add_argument("--gunicorn-workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=4)
    args = parser.parse_args()
    for tool in ("wrk", "nginx", "openssl", "redis-server"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            print(f"needs {tool} (apt-get install {tool})", file=sys.stderr)
            return 2
    workdir = Path(tempfile.mkdtemp(prefix="clarity-admin-bench-"))
    server = RedisServer(workdir / "redis", extra=("--maxmemory", "6gb", "--appendonly", "no"))
    server.start()
    results: dict = {"machine": {"cpus": os.cpu_count(),
                                 "loadavg_at_start": os.getloadavg()}, "args": vars(args)}
    try:
        results["load"] = load(server, args.waiting, args.failed)
        print(f"loaded: {results['load']}", flush=True)
        run_stack(server, workdir, args, "0.5", "cached", results)
        run_stack(server, workdir, args, "0", "uncached", results)
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    paced = results["overview_uncached_paced"]
    targets = {
        # p99 while the target's rate arrives, and that rate actually served (paced run);
        # the most it can serve (unpaced run).
        "overview_p99_le_25ms_at_1000_rps": paced["p99_ms"] <= 25 and paced["rps"] >= 1000,
        "overview_ge_1000_rps": results["overview_uncached"]["rps"] >= 1000,
        # The issue's target: at --connections (16), not at a few operators' 4.
        "failed_page_p99_le_50ms_busy": results["failed_page_50_busy"]["p99_ms"] <= 50,
    }
    results["targets_met_uncached"] = targets
    results["machine"]["loadavg_at_end"] = os.getloadavg()
    print(json.dumps(results, indent=2))
    record.save("admin", results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
