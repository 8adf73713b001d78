"""The clarity_admin role: gunicorn serves the admin app on its socket, hardened."""

import json

from conftest import http_once

SOCKET = "/run/clarity-admin/gunicorn.sock"
KEY = "molecule-admin-key-0123456789abcdef"
HEALTH = "http://localhost/api/admin/queue?action=health"


def test_admin_service_runs_as_clarity_and_is_enabled(host):
    service = host.service("clarity-admin")
    assert service.is_running
    assert service.is_enabled
    pid = host.run("systemctl show -p MainPID --value clarity-admin").stdout.strip()
    assert host.process.get(pid=int(pid)).user == "clarity"


def test_socket_answers_the_api_with_the_key_only(host):
    status, _, body = http_once(
        host, HEALTH, unix_socket=SOCKET, headers={"Authorization": f"Bearer {KEY}"}
    )
    assert status == 200, body
    assert json.loads(body)
    status, _, _ = http_once(host, HEALTH, unix_socket=SOCKET)
    assert status == 401


def test_gunicorn_conf_and_env_are_not_world_readable(host):
    assert host.file("/etc/clarity/gunicorn.conf.py").mode == 0o640
    env = host.file("/etc/clarity/admin.env")
    assert (env.user, env.mode) == ("root", 0o600)
    assert env.contains(f"^ADMIN_API_KEY={KEY}$")


def test_prometheus_multiprocess_dir_is_in_the_runtime_directory(host):
    assert host.file("/run/clarity-admin/prometheus").is_directory


def test_admin_unit_passes_verify_and_is_hardened(host):
    result = host.run("systemd-analyze verify /etc/systemd/system/clarity-admin.service")
    assert result.rc == 0 and result.stderr.strip() == "", result.stderr
    out = host.run("systemd-analyze security --no-pager clarity-admin.service").stdout
    exposure = float(
        out.rsplit("Overall exposure level for clarity-admin.service: ", 1)[1].split()[0]
    )
    assert exposure <= 2.5
