"""One run of thousands of jobs through every fault at once: workers SIGKILLed, a worker
stalled (SIGSTOP) past its leases and then let go, Redis SIGKILLed and restarted from its
AOF, the queue paused and resumed. Every job runs at least once, nothing is left in any
state, each job is in exactly one state set throughout the end, and the duplicates (what
at-least-once costs) are counted: tests/artifacts/fault-run.json."""

from __future__ import annotations

import collections
import json
import signal
import time

import pytest

from tests.helpers import recorded, wait_for
from worker.management import QueueManager
from worker.producer import JobRequest, enqueue_many

JOBS = 4000
LEASE = 2.0


@pytest.mark.slow
def test_thousands_of_jobs_survive_kills_a_stall_a_redis_crash_and_a_pause(
        configure, redis_factory, workers, artifacts):
    # appendfsync always: a SIGKILLed Redis keeps every write it acknowledged, so "every job
    # ran" is exact here (production's everysec can lose the last second; see docs/deploy.md).
    server = configure(redis_factory("faults", extra=("--appendfsync", "always")))
    enqueue_many([JobRequest("sync", "record", {"n": i, "sleep": 0.05}) for i in range(JOBS)])
    settings = {"lease_seconds": LEASE, "max_deliveries": 20}
    pool = [workers(server=server, concurrency=4, **settings) for _ in range(3)]
    events = []
    started = time.monotonic()

    def at(seconds, what, action):
        delay = started + seconds - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        action()
        events.append((round(time.monotonic() - started, 1), what))

    at(2, "SIGKILL worker 0", pool[0].kill)
    at(2.5, "start a replacement", lambda: pool.append(workers(server=server, concurrency=4,
                                                                **settings)))
    at(3, "SIGSTOP worker 1", lambda: pool[1].signal(signal.SIGSTOP))
    at(4, "SIGKILL Redis", server.kill)
    at(5, "restart Redis from its AOF", server.start)
    at(6, "pause sync", lambda: QueueManager().pause("sync"))
    at(7.5, "resume sync", lambda: QueueManager().resume("sync"))
    at(3 + 3 * LEASE, "SIGCONT worker 1 (its leases long gone)",
       lambda: pool[1].signal(signal.SIGCONT))
    at(10, "SIGKILL worker 2", pool[2].kill)

    wait_for(lambda: len(set(recorded("done"))) == JOBS, timeout=180, interval=0.5,
             message="every job to run at least once")
    manager = QueueManager()
    wait_for(lambda: (c := manager.counts("sync"))["waiting"] + c["delayed"] + c["active"]
             + c["failed"] == 0, timeout=30, message="no job left in any state")
    assert manager.check_invariants("sync") == []
    done = collections.Counter(recorded("done"))
    starts = collections.Counter(recorded("started"))
    assert set(done) == {str(i) for i in range(JOBS)}
    report = {"jobs": JOBS, "completedRuns": sum(done.values()),
              "duplicateCompletions": sum(done.values()) - JOBS,
              "starts": sum(starts.values()), "restarts": sum(starts.values()) - JOBS,
              "startedTwiceOrMore": sum(1 for n in starts.values() if n > 1),
              "seconds": round(time.monotonic() - started, 1), "events": events}
    (artifacts / "fault-run.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nfault run: {report}")
