"""site.yml's fleet: jobs cross hosts, Redis and PostgreSQL are shared and closed, units are
set up to heal themselves, monitoring sees everyone and Alertmanager knows whom to tell."""

import json
import shlex
import time

import pytest
from conftest import http, http_once, podman_host

KEY = "molecule-admin-key-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {KEY}"}
ADMIN_ENV = "set -a && . /etc/clarity/admin.env && set +a && "
CLARITY = "/opt/clarity/current/bin/clarity"


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
    """From a worker host: Redis's plain port refuses the connection (TLS between hosts: it
    serves loopback only); its TLS port, with the host's certificate but no password, is
    refused by Redis (NOAUTH)."""
    target = address(redis1)
    tls = "/etc/clarity/tls"
    probe = (
        "import redis\n"
        f"plain = redis.Redis({target!r}, socket_timeout=5)\n"
        "try:\n    plain.set('stranger', '1')\n"
        "except redis.exceptions.ConnectionError as exc:\n"
        "    print('plain refused' if 'refused' in str(exc) else f'plain error {exc}')\n"
        "else:\n    print('plain accepted')\n"
        f"secure = redis.Redis({target!r}, port=6380, socket_timeout=5, ssl=True,\n"
        f"                     ssl_ca_certs='{tls}/ca.crt', ssl_certfile='{tls}/host.crt',\n"
        f"                     ssl_keyfile='{tls}/host.key')\n"
        "try:\n    secure.set('stranger', '1')\n"
        "except redis.exceptions.AuthenticationError:\n    print('tls refused')\n"
        "except redis.exceptions.ResponseError as exc:\n"
        "    print('tls refused' if 'NOAUTH' in str(exc) else f'tls error {exc}')\n"
        "else:\n    print('tls accepted')\n"
    )
    result = worker1.run(f"/opt/clarity/current/bin/python -c {shlex.quote(probe)}")
    assert result.stdout.split("\n")[:2] == ["plain refused", "tls refused"], \
        result.stdout + result.stderr


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
        expected = {"node", "redis", "clarity_worker", "clarity_admin", "clarity_admin_https",
                    "alertmanager"}
        if not down and expected <= jobs:
            break
        assert time.monotonic() < deadline, down
        time.sleep(3)
    assert len([t for t in targets if t["labels"]["job"] == "node"]) == 4


def test_prometheus_sends_alerts_to_alertmanager_with_both_receivers(admin1):
    status, _, body = http_once(admin1, "http://127.0.0.1:9090/api/v1/alertmanagers")
    assert status == 200, body
    active = json.loads(body)["data"]["activeAlertmanagers"]
    assert [a["url"] for a in active] == ["http://localhost:9093/api/v2/alerts"]
    status, _, body = http_once(admin1, "http://127.0.0.1:9093/api/v2/status")
    assert status == 200, body
    config = json.loads(body)["config"]["original"]
    assert "email_configs" in config and "webhook_configs" in config
    assert admin1.run("amtool check-config /etc/prometheus/alertmanager.yml").rc == 0


def test_each_app_host_runs_the_current_release_from_its_own_venv(worker1, worker2, admin1):
    releases = set()
    for host in (worker1, worker2, admin1):
        link = host.file("/opt/clarity/current")
        assert link.is_symlink
        target = link.linked_to
        assert target.startswith("/opt/clarity/releases/"), target
        assert host.file(f"{target}/.clarity-release").contains("^digest=")
        assert not host.file("/opt/clarity/venv").exists
        releases.add(target)
    assert len(releases) == 1, releases


def test_the_app_database_is_the_fleets_postgresql(redis1, worker1, admin1):
    url = f"postgresql+psycopg://clarity:molecule-postgresql-password-0123456789abcdef@{address(redis1)}:5432/clarity"
    assert worker1.file("/etc/clarity/worker.env").contains(f"^DATABASE_URL={url}$")
    assert admin1.file("/etc/clarity/admin.env").contains(f"^DATABASE_URL={url}$")
    result = worker1.run("systemd-run --wait --pipe --quiet -p EnvironmentFile=/etc/clarity/worker.env "
                         f"-p User=clarity {CLARITY} db current --check")
    assert result.rc == 0, result.stdout + result.stderr
    assert "up to date" in result.stdout


def test_worker_units_never_stop_restarting_and_take_their_limits_from_the_inventory(worker1,
                                                                                      worker2):
    def show(host, unit, *props):
        out = host.run(f"systemctl show -p {','.join(props)} {unit}").stdout
        return dict(line.split("=", 1) for line in out.splitlines())

    sync = show(worker1, "clarity-worker@sync", "StartLimitIntervalUSec", "MemoryMax", "OOMPolicy")
    assert sync == {"StartLimitIntervalUSec": "0", "MemoryMax": "infinity", "OOMPolicy": "stop"}
    email = show(worker2, "clarity-worker@email", "MemoryMax", "OOMPolicy")
    assert email == {"MemoryMax": str(768 * 1024 * 1024), "OOMPolicy": "kill"}


def test_process_mode_workers_keep_their_metrics_in_their_runtime_directory(worker1):
    env = worker1.file("/etc/clarity/worker-webhook.env")
    assert env.contains("^WORKER_PROCESSES=true$")
    assert env.contains("^PROMETHEUS_MULTIPROC_DIR=/run/clarity-worker-webhook/prometheus$")
    assert not worker1.file("/etc/clarity/worker-sync.env").contains("PROMETHEUS_MULTIPROC_DIR")
    assert worker1.file("/run/clarity-worker-webhook/prometheus").is_directory
    status, _, body = http_once(worker1, "http://127.0.0.1:9104/metrics")
    assert status == 200
    assert "clarity_worker_up" in body


def test_the_legacy_poller_runs_where_the_inventory_enables_it(worker1, worker2):
    assert worker1.service("clarity-legacy-poller").is_running
    assert worker1.service("clarity-legacy-poller").is_enabled
    assert not worker2.service("clarity-legacy-poller").is_running
    assert not worker2.service("clarity-legacy-poller").is_enabled


@pytest.mark.parametrize("unit", ["redis-server", "postgresql@15-main"])
def test_services_binding_the_private_address_wait_for_it(redis1, unit):
    waiter = f"clarity-address-online@{address(redis1)}.service"
    after = redis1.run(f"systemctl show -p After,Wants,StartLimitIntervalUSec {unit}").stdout
    assert waiter in after.split("After=", 1)[1].splitlines()[0]
    assert "StartLimitIntervalUSec=0" in after
    assert redis1.service(waiter).is_running  # active (exited): the address is up


def test_time_sync_is_timesyncd_where_no_other_daemon_keeps_time(redis1):
    assert redis1.package("systemd-timesyncd").is_installed
    assert redis1.file("/etc/systemd/timesyncd.conf.d/90-clarity.conf").exists


# --- TLS between hosts (clarity_tls role; docs/deploy.md "TLS between hosts") ------------

def test_clients_use_redis_tls_with_their_hosts_certificate(worker1, worker2, admin1):
    for host, env in ((worker1, "/etc/clarity/worker.env"), (worker2, "/etc/clarity/worker.env"),
                      (admin1, "/etc/clarity/admin.env")):
        text = host.file(env).content_string
        for line in ("REDIS_TLS=true", "REDIS_PORT=6380", "REDIS_TLS_CA_FILE=/etc/clarity/tls/ca.crt",
                     "REDIS_TLS_CERT_FILE=/etc/clarity/tls/host.crt",
                     "REDIS_TLS_KEY_FILE=/etc/clarity/tls/host.key", "REDIS_TLS_CHECK_HOSTNAME=true"):
            assert line in text.splitlines(), (host, line)
        key = host.file("/etc/clarity/tls/host.key")
        assert (key.user, key.group, key.mode) == ("root", "ssl-cert", 0o640)
        assert "ssl-cert" in host.user("clarity").groups


def test_prometheus_sees_every_hosts_certificate_expiry(admin1):
    """clarity-tls-expiry exports each host's notAfter; the expiry alerts are loaded."""
    query = "http://127.0.0.1:9090/api/v1/query?query=" + \
        "count(clarity_tls_certificate_not_after_timestamp_seconds%7Bpath%3D%22/etc/clarity/tls/host.crt%22%7D)"
    deadline = time.monotonic() + 120
    while True:
        status, _, body = http_once(admin1, query)
        result = json.loads(body)["data"]["result"] if status == 200 else []
        if result and result[0]["value"][1] == "4":
            break
        assert time.monotonic() < deadline, body
        time.sleep(5)
    status, _, body = http_once(admin1, "http://127.0.0.1:9090/api/v1/rules?type=alert")
    names = {r["name"] for g in json.loads(body)["data"]["groups"] for r in g["rules"]}
    assert {"ClarityTLSCertificateExpiresSoon", "ClarityTLSCertificateExpired"} <= names
