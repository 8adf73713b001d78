"""site.yml's fleet: jobs cross hosts, Redis is shared and closed, monitoring sees everyone."""

import json
import shlex
import time

import pytest
from conftest import http, http_once, podman_host

KEY = "molecule-admin-key-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {KEY}"}
ADMIN_ENV = "set -a && . /etc/clarity/admin.env && set +a && "
CLARITY = "/opt/clarity/venv/bin/clarity"


@pytest.fixture(scope="module")
def redis1():
    return podman_host("redis1")


@pytest.fixture(scope="module")
def worker1():
    return podman_host("worker1")


@pytest.fixture(scope="module")
def worker2():
    return podman_host("worker2")


@pytest.fixture(scope="module")
def admin1():
    return podman_host("admin1")


def address(host):
    return host.run("ip -4 -o route get 1.1.1.1").stdout.split("src ")[1].split()[0]


def test_each_worker_host_runs_exactly_its_queues(worker1, worker2):
    for host, queues, absent in (
        (worker1, ["sync", "webhook"], "email"),
        (worker2, ["email"], "sync"),
    ):
        for queue in queues:
            assert host.service(f"clarity-worker@{queue}").is_running, (host, queue)
        assert not host.service(f"clarity-worker@{absent}").is_running


@pytest.mark.parametrize("queue, worker", [("sync", "worker1"), ("email", "worker2")])
def test_job_enqueued_on_the_admin_host_runs_on_the_worker_host(admin1, queue, worker):
    marker = f"fleet-{queue}-{time.time_ns()}"
    result = admin1.run(
        ADMIN_ENV + CLARITY + f" enqueue {queue} ping '{json.dumps({'echo': marker})}' --wait 60"
    )
    assert result.rc == 0, result.stdout + result.stderr
    assert json.loads(result.stdout)["state"] == "completed"


def test_job_enqueued_through_nginx_runs(admin1):
    body = json.dumps({"queue": "sync", "task": "ping", "payload": {"echo": "nginx"}})
    status, _, payload = http_once(
        admin1,
        "https://127.0.0.1/api/jobs",
        method="POST",
        body=body,
        headers={**AUTH, "Content-Type": "application/json"},
    )
    assert status == 201, payload
    job_id = json.loads(payload)["id"]
    deadline = time.monotonic() + 60
    while True:
        status, _, job = http_once(
            admin1,
            f"https://127.0.0.1/api/admin/queue?action=job&queue=sync&id={job_id}",
            headers=AUTH,
        )
        if status == 404 or (status == 200 and json.loads(job).get("state") == "completed"):
            break  # acknowledged (gone, or kept as a result): a worker ran it
        assert time.monotonic() < deadline, job
        time.sleep(1)


def test_redis_is_shared_on_the_private_network_and_refuses_strangers(redis1, worker1):
    target = address(redis1)
    probe = (
        "import redis\n"
        f"r = redis.Redis({target!r}, socket_timeout=5)\n"
        "try:\n    r.set('stranger', '1')\n"
        "except redis.exceptions.AuthenticationError:\n    print('refused')\n"
        "except redis.exceptions.ResponseError as exc:\n"
        "    print('refused' if 'NOAUTH' in str(exc) else f'error {exc}')\n"
        "else:\n    print('accepted')\n"
    )
    result = worker1.run(f"/opt/clarity/venv/bin/python -c {shlex.quote(probe)}")
    assert result.stdout.strip() == "refused", result.stdout + result.stderr


def test_admin_health_through_nginx_needs_the_key(admin1):
    url = "https://127.0.0.1/api/admin/queue?action=health"
    assert http_once(admin1, url)[0] == 401
    status, _, body = http_once(admin1, url, headers=AUTH)
    assert status == 200, body


def test_worker_health_through_nginx(admin1):
    statuses = [s for s, _, _ in http(admin1, "https://127.0.0.1/queue/health", headers=AUTH)]
    assert statuses == [200]
    assert http_once(admin1, "https://127.0.0.1/queue/health")[0] == 401


def test_prometheus_shows_every_target_up(admin1):
    deadline = time.monotonic() + 90
    while True:
        status, _, body = http_once(admin1, "http://127.0.0.1:9090/api/v1/targets")
        targets = json.loads(body)["data"]["activeTargets"] if status == 200 else []
        down = sorted(
            f"{t['labels']['job']}/{t['labels']['instance']}: {t['lastError']}"
            for t in targets
            if t["health"] != "up"
        )
        jobs = {t["labels"]["job"] for t in targets}
        if not down and {"node", "redis", "clarity_worker", "clarity_admin"} <= jobs:
            break
        assert time.monotonic() < deadline, down
        time.sleep(3)
    assert len([t for t in targets if t["labels"]["job"] == "node"]) == 4
