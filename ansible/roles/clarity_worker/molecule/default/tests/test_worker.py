"""The clarity_worker role: workers run hardened under systemd and do the work."""

import json

import pytest

ENV = "set -a && . /etc/clarity/worker.env && set +a && "
CLARITY = "/opt/clarity/current/bin/clarity"


@pytest.mark.parametrize("queue", ["sync", "email"])
def test_each_listed_queue_has_a_running_enabled_worker(host, queue):
    service = host.service(f"clarity-worker@{queue}")
    assert service.is_running
    assert service.is_enabled
    pid = host.run(f"systemctl show -p MainPID --value clarity-worker@{queue}").stdout.strip()
    assert host.process.get(pid=int(pid)).user == "clarity"


def test_a_job_enqueued_on_the_host_runs(host):
    result = host.run(ENV + CLARITY + ' enqueue sync ping \'{"echo": "molecule"}\' --wait 30')
    assert result.rc == 0, result.stdout + result.stderr
    assert json.loads(result.stdout)["state"] == "completed"


def test_env_files_are_root_only_and_hold_the_vault_secret(host):
    for name in ("worker.env", "worker-sync.env", "worker-email.env"):
        env = host.file(f"/etc/clarity/{name}")
        assert (env.user, env.mode) == ("root", 0o600)
    assert host.file("/etc/clarity/worker.env").contains(
        "^JOB_SIGNING_SECRET=molecule-signing-secret-0123456789abcdef$"
    )
    sync = host.file("/etc/clarity/worker-sync.env")
    assert sync.contains("^WORKER_CONCURRENCY=2$")
    assert sync.contains("^HEALTH_CHECK_PORT=9101$")
    assert host.file("/etc/clarity/worker-email.env").contains("^HEALTH_CHECK_PORT=9102$")


def test_units_pass_systemd_analyze_verify(host):
    result = host.run(
        "systemd-analyze verify /etc/systemd/system/clarity-worker@.service "
        "/etc/systemd/system/clarity-worker@sync.service"
    )
    assert result.rc == 0, result.stderr
    assert result.stderr.strip() == ""


def test_worker_exposure_is_at_most_2_5(host):
    out = host.run("systemd-analyze security --no-pager clarity-worker@sync.service").stdout
    exposure = float(
        out.rsplit("Overall exposure level for clarity-worker@sync.service: ", 1)[1].split()[0]
    )
    print(f"systemd-analyze security clarity-worker@sync.service: {exposure}")
    assert exposure <= 2.5


def test_reload_restarts_the_consumer_in_place_and_stop_is_graceful(host):
    unit = "clarity-worker@email"
    pid = host.run(f"systemctl show -p MainPID --value {unit}").stdout.strip()
    assert host.run(f"systemctl reload {unit}").rc == 0
    assert host.service(unit).is_running
    assert host.run(f"systemctl show -p MainPID --value {unit}").stdout.strip() == pid
    assert host.run(f"systemctl stop {unit}").rc == 0
    # SIGINT lets the worker exit cleanly: no SIGKILL, no failure result.
    assert host.run(f"systemctl show -p Result --value {unit}").stdout.strip() == "success"
    assert host.run(f"systemctl start {unit}").rc == 0


def test_app_is_installed_from_the_wheelhouse_without_an_index_as_a_release(host):
    current = host.file("/opt/clarity/current")
    assert current.is_symlink
    release = current.linked_to
    assert release.startswith("/opt/clarity/releases/")
    assert host.run(f"{release}/bin/pip show clarity-jobs").rc == 0
    marker = host.file(f"{release}/.clarity-release")
    assert marker.contains("^version=") and marker.contains("^digest=")
