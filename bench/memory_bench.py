"""Redis bytes per job: a small waiting job, a delayed one, a failed one (with a typical error
and traceback), and plain Huey's waiting job for comparison; same Redis, same run.

    .venv/bin/python -m bench.memory_bench [--jobs 100000] [--json results.json]

Measured as the growth of INFO used_memory over `--jobs` jobs, divided by their number
(allocator overhead included, which is what a full Redis pays)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from app.devstack.redis_server import RedisServer
from bench import record

SECRET = "bench-signing-secret-0123456789abcdef"
PAYLOAD = {"user_id": 123456, "sync_type": "SCHEDULED"}  # a typical small job


def used(client) -> int:
    return int(client.info("memory")["used_memory"])


def per_job(client, fill, n: int) -> float:
    before = used(client)
    fill()
    return round((used(client) - before) / n, 1)


def main() -> None:
    record.begin()
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    n = args.jobs
    server = RedisServer(Path(tempfile.mkdtemp(prefix="clarity-membench-")),
                         extra=("--appendonly", "no")).start()
    try:
        os.environ.update({**server.env, "JOB_SIGNING_SECRET": SECRET,
                           "REDIS_KEY_PREFIX": "mem", "TASK_MODULES": "bench.tasks",
                           "CLARITY_ENV_FILE": "/nonexistent.env"})
        from huey import PriorityRedisHuey

        from worker.management import QueueManager
        from worker.producer import JobRequest, enqueue_many
        from worker.storage import Settlement

        client = server.client()
        results = {"jobs": n}

        def waiting(queue):
            return lambda: [enqueue_many([JobRequest(queue, "noop", PAYLOAD)
                                          for _ in range(min(10_000, n - i))])
                            for i in range(0, n, 10_000)]

        results["waitingBytesPerJob"] = per_job(client, waiting("sync"), n)
        results["delayedBytesPerJob"] = per_job(client, lambda: [
            enqueue_many([JobRequest("email", "noop", PAYLOAD, delay=3600)
                          for _ in range(min(10_000, n - i))]) for i in range(0, n, 10_000)], n)

        storage = QueueManager().storage("sync")
        error = "provider answered 503 Service Unavailable (after 4 attempts)"
        traceback = ("Traceback (most recent call last):\n"
                     '  File "/opt/clarity/current/app/jobs/sync.py", line 142, in sync_user\n'
                     "    accounts = client.accounts(login)\n"
                     '  File "/opt/clarity/current/app/jobs/aggregator.py", line 98, in get\n'
                     "    raise AggregatorUnavailable(response.status_code)\n"
                     f"app.jobs.aggregator.AggregatorUnavailable: {error}\n")
        before = used(client)
        while leases := storage.lease_batch(1000):
            storage.settle([Settlement("fail", lease, reason="error",
                                       error_type="AggregatorUnavailable", error=error,
                                       traceback=traceback, attempts=5) for lease in leases])
        # A failed job replaces its waiting self: the growth is the failed one's extra.
        results["failedBytesPerJob"] = round(
            results["waitingBytesPerJob"] + (used(client) - before) / n, 1)

        huey = PriorityRedisHuey("huey-mem", port=server.port, password=server.password,
                                 results=False)

        @huey.task()
        def noop(payload):
            return None

        results["hueyWaitingBytesPerJob"] = per_job(
            client, lambda: [noop(PAYLOAD) for _ in range(n)], n)
        print(json.dumps(results, indent=2))
        record.save("memory", results, path=args.json)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
