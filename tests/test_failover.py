"""Redis that survives its host: a primary, a replica and three sentinels, real processes.
Under load with workers running, the primary is SIGKILLed; the sentinels promote the replica,
producers and workers follow it without a restart, every acknowledged job runs, and the old
primary rejoins as a replica. Failover time and the throughput dip go to
tests/artifacts/failover.json."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
import redis

from app.devstack.sentinel import SentinelGroup
from tests.helpers import recorded_safe, wait_for
from worker.connections import topology
from worker.management import QueueManager
from worker.producer import enqueue
from worker.settings import get_settings


@pytest.fixture
def sentinels(tmp_path):
    group = SentinelGroup(tmp_path / "ha").start()
    yield group
    group.stop()


@pytest.mark.slow
def test_primary_killed_under_load_fails_over_and_every_acknowledged_job_runs(
        configure, sentinels, workers, artifacts):
    configure(sentinels)
    assert topology(get_settings())["primary"] == f"127.0.0.1:{sentinels.nodes[0].port}"
    workers(server=sentinels, concurrency=4)
    acknowledged: list[str] = []
    refused: list[float] = []
    stop = threading.Event()

    def produce():
        n = 0
        while not stop.is_set():
            try:
                enqueue("sync", "record", {"n": n})
                acknowledged.append(str(n))
            except redis.RedisError:
                refused.append(time.monotonic())  # not acknowledged: the caller retries
                time.sleep(0.05)
            n += 1
            time.sleep(0.005)

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    samples = []

    def sample(until: float):
        while time.monotonic() < until:
            samples.append((round(time.monotonic() - started, 2), len(recorded_safe())))
            time.sleep(0.25)

    started = time.monotonic()
    sample(started + 3)
    old = sentinels.nodes[0]
    killed_at = time.monotonic()
    old.kill()
    new_port = wait_for(lambda: (p := sentinels.primary_port()) != old.port and p,
                        timeout=30, interval=0.1, message="a new primary")
    promoted_after = time.monotonic() - killed_at
    done_before = len(recorded_safe())
    wait_for(lambda: len(recorded_safe()) > done_before + 20, timeout=30, interval=0.05,
             message="jobs running again on the new primary")
    first_job_after = time.monotonic() - killed_at
    sample(time.monotonic() + 3)
    stop.set()
    thread.join(10)

    wait_for(lambda: set(recorded_safe()) >= set(acknowledged), timeout=60, interval=0.5,
             message="every acknowledged job to run")
    manager = QueueManager()
    assert manager.check_invariants("sync") == []
    assert topology(get_settings())["primary"] == f"127.0.0.1:{new_port}"

    old.start()  # the old primary comes back: the sentinels make it follow the new one
    wait_for(lambda: sentinels.role(old) == "slave", timeout=30, interval=0.2,
             message="the old primary rejoining as a replica")
    report = {"acknowledged": len(acknowledged), "refusedDuringFailover": len(refused),
              "promotedAfterSeconds": round(promoted_after, 2),
              "jobsRunningAgainAfterSeconds": round(first_job_after, 2),
              "doneOverTime": samples}
    (artifacts / "failover.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nfailover: {report}")


def test_an_enqueue_is_acknowledged_only_once_a_replica_has_it(configure, sentinels):
    configure(sentinels)
    enqueue("sync", "record", {"n": 1})  # WAIT 1 answered: the replica holds it
    replicas = sentinels.nodes[1:]
    for replica in replicas:
        replica.child.send_signal(signal.SIGSTOP)  # the replicas stall: nothing reaches them
    try:
        with pytest.raises(redis.RedisError, match="replica"):
            enqueue("sync", "record", {"n": 2})  # not acknowledged: the caller retries
    finally:
        for replica in replicas:
            replica.child.send_signal(signal.SIGCONT)


def test_doctor_health_and_the_admin_name_the_primary_and_its_replicas(configure, sentinels,
                                                                       workers):
    from app.admin import create_app
    from app.admin.config import reset_admin_settings_cache
    from app.devstack.processes import free_port
    from tests.observability.helpers import get_json

    configure(sentinels, admin_api_keys="ops:admin-key-0123456789abcdef")
    reset_admin_settings_cache()
    primary = f"127.0.0.1:{sentinels.nodes[0].port}"
    replicas = {f"127.0.0.1:{n.port}" for n in sentinels.nodes[1:]}
    port = free_port()
    workers(server=sentinels, health_check_port=port, health_check_host="127.0.0.1")
    health = wait_for(lambda: (r := get_json(f"http://127.0.0.1:{port}/health"))[0] == 200
                      and r[1], message="worker healthy")
    where = health["checks"]["redis"]["topology"]
    assert where["primary"] == primary and set(where["replicas"]) == replicas
    overview = create_app({"TESTING": True}).test_client().get(
        "/api/admin/queue?action=overview",
        headers={"Authorization": "Bearer admin-key-0123456789abcdef"}).get_json()
    assert overview["redis"]["topology"]["primary"] == primary
    doctor = subprocess.run([sys.executable, "-m", "app", "doctor", "--json", "--no-workers"],
                            capture_output=True, text=True, timeout=60, check=False,
                            env={**os.environ, "CLARITY_ENV_FILE": "/nonexistent.env"})
    checks = {c["name"]: c for c in json.loads(doctor.stdout)["checks"]}
    assert checks["topology"]["status"] == "ok" and primary in checks["topology"]["detail"]
    reset_admin_settings_cache()


def test_a_sentinel_whose_port_was_taken_meanwhile_starts_on_another(tmp_path):
    # The test stack picks ports before it starts anything; a replication link or a client
    # may take one as its own ephemeral port in between (it happened in a full run).
    group = SentinelGroup(tmp_path / "ha", replicas=1, sentinels=3)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))  # held as a client's source port is: not listening
        taken = squatter.getsockname()[1]
        group.sentinel_ports[0] = taken
        group.start()
        try:
            assert taken not in group.sentinel_ports and len(group.sentinel_ports) == 3
            assert all(group.sentinel_client(p).ping() for p in group.sentinel_ports)
            assert len(group.sentinels) == 3  # the one that failed to bind is not kept
        finally:
            group.stop()
