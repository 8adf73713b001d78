"""Only signed messages run, and the signing secret rotates without parking the backlog."""

from __future__ import annotations

import threading
import time
import uuid

from app.devstack.processes import free_port
from tests.helpers import SECRET, recorded, wait_for
from tests.observability.helpers import get_json, scrape
from worker.hueys import get_huey
from worker.management import QueueManager
from worker.messages import SignedJSONSerializer
from worker.producer import enqueue
from worker.settings import load_settings, reset_settings_cache
from worker.storage import WireJob

NEW_SECRET = "rotated-signing-secret-fedcba9876543210"


def plant(body: bytes) -> str:
    """Write a job straight into Redis, as someone with write access alone could."""
    job_id = str(uuid.uuid4())
    get_huey("sync").storage.enqueue_jobs([WireJob(job_id, body, 3, task="record")])
    return job_id


def test_only_signed_jobs_run_whatever_else_is_written_into_redis(env, workers):
    forged_key = SignedJSONSerializer("someone-elses-secret-0123456789", "sync")
    planted = {
        "huey's plain form": plant(b'd{"id":"x","task":"record","args":[{"n":"evil"}]}'),
        "a JSON list": plant(b'[{"n":"evil"}]'),
        "garbage": plant(b"\x00\xff\xfe not a job at all"),
        "the v1 form, unsigned": plant(b"v1." + b"0" * 64 + b'.{"q":"sync","id":"x",'
                                       b'"task":"record","args":[{"n":"evil"}]}'),
        "signed with another key": plant(forged_key.encode_new_job(
            "y", "record", b'{"n":"evil"}', 3, None, 0, 1.0, None)),
        "a long forged task name": plant(b"v2.deadbeef." + b"A" * 43 + b'.{"task":"'
                                         + b"x" * 300 + b'"}'),
    }
    port = free_port()
    workers(concurrency=2, health_check_port=port, health_check_host="127.0.0.1")
    manager = QueueManager()
    wait_for(lambda: manager.counts("sync")["failed"] == len(planted), message="all parked")
    for what, job_id in planted.items():
        job = manager.get_job("sync", job_id)  # describing one never raises either
        assert job["state"] == "failed", what
        assert job["reason"] in ("bad signature", "bad message"), what
    assert "evil" not in recorded("started")
    listed = manager.list_failed("sync", limit=50)
    assert listed["total"] == len(planted)
    enqueue("sync", "record", {"n": "good"})
    wait_for(lambda: recorded("done") == ["good"], message="the worker still serving")
    labels = {dict(labels).get("task") for (name, labels) in scrape(
        f"http://127.0.0.1:{port}/metrics") if name == "clarity_bad_messages_total"}
    assert labels <= {"record", "unknown"}  # an unverified name never becomes a label
    assert QueueManager().check_invariants("sync") == []


def test_the_signing_secret_rotates_under_load_and_nothing_is_parked(env, workers,
                                                                     monkeypatch):
    from click.testing import CliRunner

    from app.cli import main

    old = {"JOB_SIGNING_SECRET": SECRET}
    both_new_first = {"JOB_SIGNING_SECRET": NEW_SECRET, "JOB_SIGNING_PREVIOUS_SECRETS": SECRET}
    new_only = {"JOB_SIGNING_SECRET": NEW_SECRET}
    producer = {"settings": load_settings(**old)}
    sent: list[str] = []
    stop = threading.Event()

    def produce():
        n = 0
        while not stop.is_set():
            settings = producer["settings"]
            # Some run at once, some wait past the rotation (signed with the old key).
            enqueue("sync", "record", {"n": n}, delay=3 if n % 10 == 0 else None,
                    settings=settings)
            sent.append(str(n))
            n += 1
            time.sleep(0.01)

    def ready_worker(**keys):
        """A worker with these keys, once it answers /health (stopping the previous one
        any earlier would leave a gap the test does not mean to test)."""
        port = free_port()
        w = workers(concurrency=4, health_check_port=port, health_check_host="127.0.0.1",
                    **keys)
        wait_for(lambda: get_json(f"http://127.0.0.1:{port}/health")[0] == 200, timeout=30,
                 message="the new worker healthy")
        return w

    w1 = ready_worker(job_signing_previous_secrets="")  # today: the old key only
    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    try:
        wait_for(lambda: len(sent) > 100, message="load before the rotation")
        # 1. Every worker learns the new key (verify only), still signing with the old one.
        w2 = ready_worker(job_signing_previous_secrets=NEW_SECRET)
        w1.stop()
        wait_for(lambda: len(sent) > 200, message="load in step 1")
        # 2. Everyone signs with the new key and still verifies the old one.
        w3 = ready_worker(job_signing_secret=NEW_SECRET, job_signing_previous_secrets=SECRET)
        w2.stop()
        producer["settings"] = load_settings(**both_new_first)
        wait_for(lambda: len(sent) > 300, message="load in step 2")
        # 3. Re-sign what still carries the old key (delayed jobs), then drop the old key.
        for key, value in both_new_first.items():
            monkeypatch.setenv(key, value)
        reset_settings_cache()
        result = CliRunner().invoke(main, ["signing", "resign"])
        assert result.exit_code == 0, result.output
        ready_worker(job_signing_secret=NEW_SECRET, job_signing_previous_secrets="")
        w3.stop()
        producer["settings"] = load_settings(**new_only)
        wait_for(lambda: len(sent) > 400, message="load in step 3")
    finally:
        stop.set()
        thread.join(10)
    wait_for(lambda: set(recorded("done")) >= set(sent), timeout=60,
             message="every job sent during the rotation to run")
    counts = QueueManager().counts("sync")
    assert counts["failed"] == 0 and counts["waiting"] == 0 and counts["delayed"] == 0
    assert QueueManager().check_invariants("sync") == []
