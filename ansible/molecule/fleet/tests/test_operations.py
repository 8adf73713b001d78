"""What an operator runs against a live fleet: a dry run shows nothing to do and no secret, a
broken Redis or database play stops before any worker changes, a release rolls over the
worker hosts one at a time while jobs keep coming (and every job runs), and a rollback
goes back to the release before.

The new release is this checkout with one byte changed in a module, built as a wheel here:
another digest, so another /opt/clarity/releases/<version>-<digest>.
"""

import base64
import json
import os
import shutil
import subprocess
import textwrap
import time
from pathlib import Path

import pytest
import yaml
from conftest import podman_host
from fleet import (
    ANSIBLE_DIR,
    KEY,
    current_release,
    enqueue_and_wait,
    main_pids,
    outside_world,
    playbook,
    psql,
    recap,
    report,
    wait_for,
)

REPO = ANSIBLE_DIR.parent
APP_HOSTS = ("worker1", "worker2", "admin1")
WORKER_UNITS = {
    "worker1": ["clarity-worker@sync", "clarity-worker@webhook", "clarity-worker@cleanup",
                "clarity-legacy-poller"],
    "worker2": ["clarity-worker@email", "clarity-worker@cleanup"],
}
ROLLING_JOBS = 3000


def vault_secrets() -> list[str]:
    """Every secret of the molecule vault, as text."""
    view = subprocess.run(
        ["ansible-vault", "view", "inventories/molecule/group_vars/all/vault.yml"],
        cwd=ANSIBLE_DIR, capture_output=True, text=True, check=True)
    found: list[str] = []

    def walk(value):
        if isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)
        elif isinstance(value, str) and len(value) >= 8:
            found.append(value)

    walk(yaml.safe_load(view.stdout))
    assert len(found) >= 8, found
    return found


@pytest.fixture(scope="module")
def new_release(tmp_path_factory):
    """(wheelhouse directory, release name) of a release that differs from the deployed one."""
    base = Path(os.environ.get("CLARITY_WHEELHOUSE")
                or Path.home() / ".cache/clarity-wheelhouse/wheels")
    assert list(base.glob("clarity_jobs-*.whl")), f"no wheelhouse at {base}"
    work = tmp_path_factory.mktemp("release")
    source = work / "src"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", ".state", "__pycache__", "*.egg-info", "build", "node_modules"))
    with open(source / "app" / "__init__.py", "a", encoding="utf-8") as module:
        module.write(f"\n# fleet test release {time.time_ns()}\n")
    wheels = work / "wheels"
    shutil.copytree(base, wheels, ignore=shutil.ignore_patterns("clarity_jobs-*"))
    subprocess.run(["/usr/bin/python3", "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--disable-pip-version-check", "--wheel-dir", str(wheels), str(source)],
                   check=True, capture_output=True)
    built = subprocess.run(
        ["/usr/bin/python3", str(ANSIBLE_DIR / "roles/clarity_worker/files/wheelhouse.py"),
         "--project", str(source), "--wheelhouse", str(wheels), "--out", str(work / "out")],
        check=True, capture_output=True, text=True)
    info = json.loads(built.stdout)
    return wheels, f"{info['version']}-{info['digest']}"


@pytest.mark.timeout(900)
def test_check_diff_on_the_converged_fleet_changes_nothing_and_shows_no_secret():
    result, seconds = playbook("site.yml", "--check", "--diff")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-5000:]
    counters = recap(output)
    assert set(counters) == {"redis1", "worker1", "worker2", "admin1"}, counters
    changed = {host: c["changed"] for host, c in counters.items() if c["changed"]}
    assert not changed, changed
    leaked = [s[:6] + "..." for s in vault_secrets() if s in output]
    assert not leaked, f"secrets in the --check --diff output: {leaked}"
    report(f"site.yml --check --diff on the converged fleet: {seconds:.0f} s")


@pytest.mark.timeout(900)
@pytest.mark.parametrize("broken", ["redis_password", "postgresql_password"])
def test_a_failed_redis_or_database_play_stops_the_run_before_workers_change(broken,
                                                                               new_release):
    wheels, release = new_release
    hosts = {name: podman_host(name) for name in WORKER_UNITS}
    before = {name: (current_release(h), main_pids(h, WORKER_UNITS[name]))
              for name, h in hosts.items()}
    result, _ = playbook("site.yml", "--tags", "postgresql,redis,worker",
                         "-e", f"{broken}=too-short", "-e", f"clarity_worker_wheelhouse={wheels}")
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-3000:]
    assert "must come from the vault" in output
    assert "Run the workers" not in output, "the workers' play started"
    for name, h in hosts.items():
        assert (current_release(h), main_pids(h, WORKER_UNITS[name])) == before[name]
        assert not h.file(f"/opt/clarity/releases/{release}").exists


PRODUCER = textwrap.dedent("""
    import http.client, json, os, ssl, sys, time
    key, base, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    ctx = ssl._create_unverified_context()
    out = open("/var/tmp/rolling-jobs.jsonl", "a")
    i = 0
    while not os.path.exists("/var/tmp/rolling-stop") and i < count:
        if i % 2:
            job = {"queue": "email", "task": "send_email", "payload": {
                "template": "welcome", "to": f"rolling-{base}-{i}@clarity.test", "context": {}}}
        else:
            job = {"queue": "sync", "task": "sync_user",
                   "payload": {"user_id": base + i, "sync_type": "MANUAL"}}
        while True:  # a job is enqueued once the admin answers 201/200; retry until then
            try:
                conn = http.client.HTTPSConnection("127.0.0.1", timeout=10, context=ctx)
                conn.request("POST", "/api/jobs", body=json.dumps(job), headers={
                    "Authorization": "Bearer " + key, "Content-Type": "application/json",
                    "Idempotency-Key": f"rolling-{base}-{i}"})
                resp = conn.getresponse()
                answer = resp.read()
                if resp.status in (200, 201):
                    job["id"] = json.loads(answer)["id"]
                    break
            except OSError:
                pass
            time.sleep(0.5)
        out.write(json.dumps(job) + "\\n")
        out.flush()
        i += 1
        time.sleep(0.4)
""")


@pytest.mark.timeout(1800)
def test_a_rolling_release_runs_every_job_enqueued_meanwhile_then_rolls_back(new_release):
    wheels, release = new_release
    admin1, redis1 = podman_host("admin1"), podman_host("redis1")
    hosts = {name: podman_host(name) for name in APP_HOSTS}
    outside = outside_world()
    base = time.time_ns() // 1000  # user ids and addresses no earlier run used
    previous = {name: current_release(h) for name, h in hosts.items()}
    assert len(set(previous.values())) == 1 and release not in previous.values(), previous

    admin1.run("rm -f /var/tmp/rolling-jobs.jsonl /var/tmp/rolling-stop")
    script = base64.b64encode(PRODUCER.encode()).decode()
    assert admin1.run(f"echo {script} | base64 -d > /var/tmp/rolling-producer.py").rc == 0
    producer = admin1.run(
        "systemd-run --unit clarity-test-producer --collect /usr/bin/python3 "
        f"/var/tmp/rolling-producer.py {KEY} {base} {ROLLING_JOBS}")
    assert producer.rc == 0, producer.stderr
    try:
        result, seconds = playbook("site.yml", "-e", f"clarity_worker_wheelhouse={wheels}")
        time.sleep(5)  # a few more jobs on the new release everywhere
    finally:
        admin1.run("touch /var/tmp/rolling-stop")
        wait_for(lambda: admin1.run("systemctl is-active clarity-test-producer").rc != 0, 60)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-5000:]
    report(f"rolling release (site.yml, 2 worker hosts one at a time, then admin): {seconds:.0f} s")

    for name, h in hosts.items():
        assert current_release(h) == release, name
        assert h.file(f"/opt/clarity/releases/{previous[name]}").is_directory  # kept
    # One batch at a time: worker2's workers started on the new release only after worker1's.
    starts = {name: [int(podman_host(name).run(
        f"systemctl show -p ExecMainStartTimestampMonotonic --value {unit}").stdout)
        for unit in units] for name, units in WORKER_UNITS.items()}
    assert max(starts["worker1"]) < min(starts["worker2"]), starts

    jobs = [json.loads(line) for line in
            admin1.run("cat /var/tmp/rolling-jobs.jsonl").stdout.splitlines()]
    syncs = [j["payload"]["user_id"] for j in jobs if j["queue"] == "sync"]
    emails = [j["payload"]["to"] for j in jobs if j["queue"] == "email"]
    assert len(syncs) > 20 and len(emails) > 20, (len(syncs), len(emails))

    def synced():
        rows = psql(redis1, "SELECT DISTINCT user_id FROM sync_log WHERE status = 'success' "
                            f"AND user_id BETWEEN {base} AND {base + ROLLING_JOBS}")
        return not set(syncs) - {int(r[0]) for r in rows}

    wait_for(synced, 120, interval=3, message="every sync enqueued during the release to run")
    wait_for(lambda: all(outside.smtp.to(to) for to in emails), 120, interval=3,
             message="every email enqueued during the release to be delivered")
    report(f"jobs enqueued during the rolling release, all run: {len(syncs)} syncs, "
           f"{len(emails)} emails")

    back, seconds = playbook("rollback.yml", "-e", f"clarity_release={previous['worker1']}")
    assert back.returncode == 0, (back.stdout + back.stderr)[-5000:]
    report(f"rollback (rollback.yml, 2 worker hosts one at a time, then admin): {seconds:.0f} s")
    for name, h in hosts.items():
        assert current_release(h) == previous[name], name
    enqueue_and_wait(admin1, "sync", "ping", {"echo": "after rollback"})
    enqueue_and_wait(admin1, "email", "ping", {"echo": "after rollback"})
