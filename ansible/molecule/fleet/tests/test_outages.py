"""Outages heal themselves and reach someone.

One setup for both promises (the two waits overlap): Redis is stopped, every worker is
restarted while it is down (a rack power cycle where Redis loads its AOF slower than the
workers boot), and a systemd timer on the Redis host brings Redis back two minutes later;
meanwhile the email worker on worker2 is stopped, which must page through Alertmanager.
Nobody touches the workers in between.
"""

import json
import shlex
import threading
import time

import pytest
from conftest import http_once, podman_host
from fleet import enqueue_and_wait, outside_world, wait_for

REDIS_LATE_SECONDS = 120
# The sync worker's /health status from its host (0: nothing answers).
HEALTH_STATUS = (
    "import urllib.error, urllib.request\n"
    "try:\n    print(urllib.request.urlopen('http://127.0.0.1:9101/health', timeout=3).status)\n"
    "except urllib.error.HTTPError as exc:\n    print(exc.code)\n"
    "except OSError:\n    print(0)\n"
)
RESTARTED = {"worker1": ["sync", "webhook", "cleanup"], "worker2": ["cleanup"]}


def worker_states(host, queues) -> dict[str, str]:
    units = " ".join(f"clarity-worker@{q}" for q in queues)
    out = host.run(f"systemctl show -p Id,ActiveState {units}").stdout
    states, unit = {}, None
    for line in out.splitlines():
        key, _, value = line.partition("=")
        if key == "Id":
            unit = value
        elif key == "ActiveState":
            states[unit] = value
    return states


@pytest.fixture(scope="module")
def outage():
    redis1, worker1, worker2 = (podman_host(n) for n in ("redis1", "worker1", "worker2"))
    hosts = {"worker1": worker1, "worker2": worker2}
    outside = outside_world()
    assert redis1.run("systemctl stop redis-server").rc == 0
    for name, queues in RESTARTED.items():
        units = " ".join(f"clarity-worker@{q}" for q in queues)
        assert hosts[name].run(f"systemctl restart {units}").rc == 0
    started = time.monotonic()
    late = redis1.run(f"systemd-run --unit clarity-test-redis-late --on-active={REDIS_LATE_SECONDS}"
                      " systemctl start redis-server")
    assert late.rc == 0, late.stderr
    assert worker2.run("systemctl stop clarity-worker@email").rc == 0

    samples: list[dict] = []
    health: list[int] = []
    done = threading.Event()

    def redis_down():
        return redis1.run("systemctl is-active redis-server").stdout.strip() != "active"

    def sample():  # what the workers do while Redis is away, every few seconds
        while not done.is_set():
            for name, queues in RESTARTED.items():
                samples.append(worker_states(hosts[name], queues))
            if redis_down():
                probe = worker1.run(f"python3 -c {shlex.quote(HEALTH_STATUS)}")
                if redis_down():  # still down after the probe: the answer counts
                    health.append(int(probe.stdout.strip() or 0))
            done.wait(3)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    yield {"started": started, "samples": samples, "health": health, "outside": outside,
           "done": done, "redis1": redis1}
    done.set()
    sampler.join()
    worker2.run("systemctl start clarity-worker@email")
    redis1.run("systemctl start redis-server")


@pytest.mark.timeout(600)
def test_a_stopped_worker_pages_through_alertmanager_by_webhook_and_email(outage):
    outside = outage["outside"]

    def worker_down():
        return [a for a in outside.alerts.alerts("firing")
                if a["labels"].get("alertname") == "ClarityWorkerDown"
                and a["labels"].get("instance") == "worker2"
                and a["labels"].get("queue") == "email"]

    [alert, *_] = wait_for(worker_down, 180, interval=2,
                           message="ClarityWorkerDown for worker2/email at the webhook receiver")
    assert alert["labels"]["severity"] == "critical"
    assert "clarity-worker@email" in alert["annotations"]["description"]
    mails = wait_for(lambda: [m for m in outside.smtp.to("ops@clarity.test")
                              if "ClarityWorkerDown" in str(m["Subject"])], 60,
                     message="the alert's email through the SMTP relay")
    assert mails


@pytest.mark.timeout(600)
def test_workers_started_before_redis_run_jobs_once_it_comes(outage):
    redis1 = outage["redis1"]
    wait_for(lambda: redis1.run("systemctl is-active redis-server").stdout.strip() == "active",
             REDIS_LATE_SECONDS + 60, interval=2, message="Redis to come back by itself")
    assert time.monotonic() - outage["started"] >= REDIS_LATE_SECONDS - 5
    admin1, worker1 = podman_host("admin1"), podman_host("worker1")
    for queue in ("sync", "webhook", "cleanup"):
        enqueue_and_wait(admin1, queue, "ping", {"echo": f"after-outage-{queue}"}, timeout=120)
    outage["done"].set()
    states = [s for sample in outage["samples"] for s in sample.values()]
    assert states, "no samples of the workers' states"
    assert "failed" not in states, states
    # While Redis was away the sync worker ran and said why it could not work.
    assert 503 in outage["health"] and 200 not in outage["health"], outage["health"]
    status, _, body = http_once(worker1, "http://127.0.0.1:9101/health")
    assert status == 200, body
    assert json.loads(body)["status"] == "ok"
