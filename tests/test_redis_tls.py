"""TLS between Clarity and Redis (issue 17.2), against real redis-server processes that
listen with TLS only and ask for a client certificate (`tls-auth-clients yes`): jobs run over
it end to end; plain clients, strangers' certificates, no certificate and an untrusted
server are refused, each with its likely cause named; ACL users over TLS; Sentinel over TLS
through a failover; the settings' errors; `clarity doctor`'s tls check."""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

import pytest
import redis
from click.testing import CliRunner
from redis.connection import SSLConnection
from redis.sentinel import SentinelManagedSSLConnection

from app.devstack import redis_acl
from app.devstack.processes import free_port
from app.devstack.redis_server import RedisServer
from app.devstack.sentinel import SentinelGroup
from app.devstack.tls import CertificateAuthority
from tests.helpers import SECRET, recorded, recorded_safe, wait_for
from worker.cli import explain_core_error
from worker.connections import connection_pool, sentinel_for, topology
from worker.settings import SettingsError, get_settings, load_settings

CA_SUBJECT = "CN=Clarity test CA"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """The fleet's CA with a host certificate (the servers') and a client's, a certificate
    of another CA, and the client's nearly expired and expired siblings."""
    root = tmp_path_factory.mktemp("pki")
    ca = CertificateAuthority(root / "ca")
    other = CertificateAuthority(root / "other", "Another CA")
    return SimpleNamespace(ca=ca, host=ca.issue("host"), client=ca.issue("client"),
                           stranger=other.issue("stranger"), other_ca=other.cert_path,
                           expiring=ca.issue("expiring", days=10),
                           expired=ca.issue("expired", expired=True))


@pytest.fixture
def tls_redis(tmp_path, pki):
    server = RedisServer(tmp_path / "redis", tls=pki.host).start()
    yield server
    server.stop()


def with_cert(files) -> dict:
    """Settings (for `configure`) presenting another client certificate."""
    return {"redis_tls_cert_file": files.cert, "redis_tls_key_file": files.key}


def enqueue_error(configure, server, **settings) -> redis.RedisError:
    """Configure this process as told and enqueue: the error it must fail with."""
    from worker.producer import enqueue

    configure(server, **settings)
    with pytest.raises((redis.ConnectionError, redis.TimeoutError)) as caught:
        enqueue("sync", "record", {"n": 1})
    return caught.value


def failing_stats() -> str:
    from app.cli import main

    result = CliRunner().invoke(main, ["stats"])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    return result.output


# --- jobs over TLS ------------------------------------------------------------------------

def test_jobs_enqueued_over_tls_run_on_a_real_worker(tls_redis, pki, configure, workers,
                                                     prefix):
    from app.admin import create_app
    from app.admin.config import reset_admin_settings_cache
    from tests.observability.helpers import get_json
    from worker.producer import enqueue

    # The server has no plain port: everything below works over TLS or not at all.
    configure(tls_redis, admin_api_keys="ops:admin-key-0123456789abcdef", **with_cert(pki.client))
    assert connection_pool(get_settings()).connection_class is SSLConnection
    health = free_port()
    worker = workers(tls_redis, health_check_port=health, health_check_host="127.0.0.1")
    for n in range(5):
        enqueue("sync", "record", {"n": n})
    enqueue("sync", "record", {"n": "later"}, delay=1)
    wait_for(lambda: len(recorded("done")) == 6, timeout=30, message="6 jobs run")
    assert sorted(recorded("done")) == ["0", "1", "2", "3", "4", "later"]
    assert get_json(f"http://127.0.0.1:{health}/health")[0] == 200
    reset_admin_settings_cache()
    try:
        overview = create_app({"TESTING": True}).test_client().get(
            "/api/admin/queue?action=overview",
            headers={"Authorization": "Bearer admin-key-0123456789abcdef"})
        assert overview.status_code == 200, overview.get_data(as_text=True)
    finally:
        reset_admin_settings_cache()
    from app.cli import main

    result = CliRunner().invoke(main, ["stats", "--json"])
    assert result.exit_code == 0, result.output
    assert worker.proc.poll() is None


# --- what is refused, and what it says ----------------------------------------------------

def test_a_plain_tcp_client_cannot_use_the_tls_port(tls_redis, configure):
    with pytest.raises(redis.ConnectionError):
        redis.Redis(port=tls_redis.port, password=tls_redis.password, socket_timeout=5).ping()
    error = enqueue_error(configure, tls_redis, redis_tls="false", redis_tls_ca_file="",
                          redis_tls_cert_file="", redis_tls_key_file="")
    assert "REDIS_TLS=true" in explain_core_error(error)


def test_a_certificate_of_another_ca_is_refused(tls_redis, pki, configure):
    error = enqueue_error(configure, tls_redis, **with_cert(pki.stranger))
    message = explain_core_error(error)
    assert f"Redis refused the client certificate ({pki.stranger.cert})" in message, message
    assert "Likely cause: Redis refused the client certificate" in failing_stats()


def test_no_client_certificate_is_refused_when_redis_asks_for_one(tls_redis, tmp_path, pki,
                                                                   configure):
    from worker.producer import enqueue

    none = {"redis_tls_cert_file": "", "redis_tls_key_file": ""}
    error = enqueue_error(configure, tls_redis, **none)
    assert "set REDIS_TLS_CERT_FILE and REDIS_TLS_KEY_FILE" in explain_core_error(error)
    # The same client is welcome where Redis does not ask (tls-auth-clients no).
    lenient = RedisServer(tmp_path / "lenient", tls=pki.host, tls_auth_clients="no").start()
    try:
        configure(lenient, **none)
        assert enqueue("sync", "record", {"n": 1}).id
    finally:
        lenient.stop()


def test_a_server_certificate_the_client_does_not_trust_fails_clearly(tls_redis, pki,
                                                                       configure, workers):
    from tests.observability.helpers import get_json

    error = enqueue_error(configure, tls_redis, redis_tls_ca_file=pki.other_ca)
    assert "CERTIFICATE_VERIFY_FAILED" in str(error)
    message = explain_core_error(error)
    assert f"not signed by the CA in REDIS_TLS_CA_FILE ({pki.other_ca})" in message, message
    assert "wrong CA file" in failing_stats()
    # A worker waits (the right CA may be on its way) and its /health says why.
    port = free_port()
    workers(tls_redis, redis_tls_ca_file=pki.other_ca, health_check_port=port,
            health_check_host="127.0.0.1")

    def health():
        code, doc = get_json(f"http://127.0.0.1:{port}/health")
        return doc and "likely cause" in doc["checks"]["consumer"].get("reason", "") and (code, doc)

    code, doc = wait_for(health, timeout=60, message="the worker's /health naming the cause")
    assert code == 503, doc
    for check in ("consumer", "redis"):  # the worker's own wait, and the health probe's
        assert "wrong CA file" in doc["checks"][check]["reason"], doc


def test_a_server_certificate_must_name_the_address_unless_told_not_to_check(
        tmp_path, pki, configure):
    from worker.producer import enqueue

    # A certificate naming the host by DNS name alone: Clarity connects to 127.0.0.1, as it
    # does to the IP address Sentinel hands out.
    dns_only = pki.ca.issue("dns-only", hosts=("localhost",))
    server = RedisServer(tmp_path / "dns-only", tls=dns_only).start()
    try:
        error = enqueue_error(configure, server)
        assert "does not name the address connected to" in explain_core_error(error)
        configure(server, redis_tls_check_hostname="false")
        assert enqueue("sync", "record", {"n": 1}).id
    finally:
        server.stop()


def test_an_acl_user_over_tls(tmp_path, pki, configure, workers, prefix):
    from worker.producer import enqueue

    passwords = redis_acl.test_passwords()
    server = RedisServer(tmp_path / "acl", acl=passwords, acl_prefix=prefix,
                         tls=pki.host).start()
    try:
        configure(server, redis_username=redis_acl.PRODUCER,
                  redis_password=passwords[redis_acl.PRODUCER][0], **with_cert(pki.client))
        workers(server, redis_username=redis_acl.WORKER,
                redis_password=passwords[redis_acl.WORKER][0])
        for n in range(3):
            enqueue("sync", "record", {"n": n})
        done = f"{prefix}:test:done"
        wait_for(lambda: server.client().llen(done) == 3, timeout=30, message="3 jobs run")
        users = {c["user"] for c in server.client().client_list()}
        assert {redis_acl.WORKER, redis_acl.PRODUCER} <= users
        with pytest.raises(redis.AuthenticationError):  # TLS is no way around the password
            server.client_as(redis_acl.WORKER, password="wrong-password").ping()
    finally:
        server.stop()


# --- Sentinel over TLS --------------------------------------------------------------------

@pytest.mark.slow
def test_sentinel_over_tls_finds_the_primary_and_follows_a_failover(tmp_path, pki,
                                                                    configure, workers):
    from worker.producer import enqueue

    group = SentinelGroup(tmp_path / "ha", tls=pki.host).start()
    try:
        configure(group, **with_cert(pki.client))
        settings = get_settings()
        old = group.nodes[0]
        assert topology(settings)["primary"] == f"127.0.0.1:{old.port}"
        assert connection_pool(settings).connection_class is SentinelManagedSSLConnection
        assert all(s.connection_pool.connection_class is SSLConnection
                   for s in sentinel_for(settings).sentinels)
        with pytest.raises(redis.ConnectionError):  # the sentinels speak TLS only
            redis.Redis(port=group.sentinel_ports[0], socket_timeout=5).ping()
        worker = workers(server=group)
        acknowledged = []

        def acknowledge(n: int) -> None:
            def attempt() -> bool:
                try:
                    enqueue("sync", "record", {"n": n})
                except redis.RedisError:  # not acknowledged: retried, as a caller would
                    return False
                acknowledged.append(str(n))
                return True

            wait_for(attempt, timeout=60, interval=0.1, message=f"job {n} acknowledged")

        for n in range(10):
            acknowledge(n)
        wait_for(lambda: set(recorded_safe()) >= set(acknowledged), timeout=30,
                 message="the first jobs run")
        old.kill()
        for n in range(10, 30):
            acknowledge(n)
        wait_for(lambda: group.primary_port() not in (None, old.port), timeout=30,
                 interval=0.1, message="a new primary")
        wait_for(lambda: set(recorded_safe()) >= set(acknowledged), timeout=60,
                 interval=0.2, message="every acknowledged job to run")
        assert topology(get_settings())["primary"] == f"127.0.0.1:{group.primary_port()}"
        assert worker.proc.poll() is None  # it followed the failover without a restart
    finally:
        group.stop()


# --- settings -----------------------------------------------------------------------------

def settings_error(**env) -> str:
    with pytest.raises(SettingsError) as caught:
        load_settings(JOB_SIGNING_SECRET=SECRET, **env)
    return str(caught.value)


@pytest.fixture
def files(pki):
    return {"ca": str(pki.client.ca), "cert": str(pki.client.cert), "key": str(pki.client.key),
            "other_key": str(pki.host.key)}


@pytest.mark.parametrize("env, expected", [
    ({"REDIS_TLS_CA_FILE": "{ca}"},
     "REDIS_TLS_CA_FILE is set but TLS is off: use rediss:// or REDIS_TLS=true"),
    ({"REDIS_TLS_CERT_FILE": "{cert}", "REDIS_TLS_KEY_FILE": "{key}"},
     "REDIS_TLS_CERT_FILE is set but TLS is off"),
    ({"REDIS_URL": "redis://h:1/0", "REDIS_TLS_KEY_FILE": "{key}"},
     "REDIS_TLS_KEY_FILE is set but TLS is off"),
    ({"REDIS_TLS": "true", "REDIS_TLS_CERT_FILE": "{cert}"},
     "REDIS_TLS_CERT_FILE is set but REDIS_TLS_KEY_FILE is not"),
    ({"REDIS_URL": "rediss://h:1/0", "REDIS_TLS_KEY_FILE": "{key}"},
     "REDIS_TLS_KEY_FILE is set but REDIS_TLS_CERT_FILE is not"),
    ({"REDIS_TLS": "true", "REDIS_TLS_CA_FILE": "/nonexistent/ca.crt"},
     "REDIS_TLS_CA_FILE: .*cannot read /nonexistent/ca.crt: No such file"),
    ({"REDIS_TLS": "true", "REDIS_TLS_CERT_FILE": "/", "REDIS_TLS_KEY_FILE": "{key}"},
     "REDIS_TLS_CERT_FILE: .*cannot read /: Is a directory"),
    ({"REDIS_TLS": "true", "REDIS_TLS_CERT_FILE": "{cert}",
      "REDIS_TLS_KEY_FILE": "/nonexistent/host.key"}, "REDIS_TLS_KEY_FILE: .*cannot read"),
    ({"REDIS_TLS": "true", "REDIS_TLS_CA_FILE": "{key}"},
     "REDIS_TLS_CA_FILE: .*is not a PEM CA bundle"),
    ({"REDIS_TLS": "true", "REDIS_TLS_CERT_FILE": "{cert}", "REDIS_TLS_KEY_FILE": "{other_key}"},
     "REDIS_TLS_CERT_FILE / REDIS_TLS_KEY_FILE: .* not a PEM certificate and its unencrypted"),
    ({"REDIS_TLS": "true", "REDIS_URL": "redis://h:1/0"},
     "REDIS_TLS is on but REDIS_URL says redis://"),
    ({"REDIS_TLS": "true", "REDIS_URL": "unix:///run/redis.sock"}, "unix:// socket"),
])
def test_bad_tls_settings_name_the_setting(files, env, expected):
    message = settings_error(**{k: v.format(**files) for k, v in env.items()})
    assert re.search(expected, message), message
    assert "PRIVATE KEY" not in message  # a key's contents never appear


def test_tls_settings_reach_every_pool(files, pki, tmp_path):
    """rediss:// turns TLS on alone; REDIS_TLS does for host and port and for Sentinel, whose
    sentinels get the same certificate; configurations that differ in TLS never share a
    pool."""
    url = load_settings(JOB_SIGNING_SECRET=SECRET, REDIS_URL="rediss://:pw@h:1/0",
                        REDIS_TLS_CA_FILE=files["ca"])
    assert url.tls and connection_pool(url).connection_class is SSLConnection
    assert connection_pool(url).connection_kwargs["ssl_ca_certs"] == files["ca"]
    host = load_settings(JOB_SIGNING_SECRET=SECRET, REDIS_TLS="true", REDIS_HOST="h",
                         REDIS_TLS_CERT_FILE=files["cert"], REDIS_TLS_KEY_FILE=files["key"],
                         REDIS_TLS_CHECK_HOSTNAME="false")
    assert host.redis_display() == "rediss://h:6379/0"
    kwargs = connection_pool(host).connection_kwargs
    assert (kwargs["ssl_certfile"], kwargs["ssl_keyfile"], kwargs["ssl_check_hostname"]) == (
        files["cert"], files["key"], False)
    plain = load_settings(JOB_SIGNING_SECRET=SECRET, REDIS_HOST="h")
    assert connection_pool(plain) is not connection_pool(host)
    other_ca = tmp_path / "copy.crt"
    other_ca.write_bytes(pki.client.ca.read_bytes())
    assert connection_pool(load_settings(
        JOB_SIGNING_SECRET=SECRET, REDIS_URL="rediss://:pw@h:1/0",
        REDIS_TLS_CA_FILE=str(other_ca))) is not connection_pool(url)
    sentinel = load_settings(JOB_SIGNING_SECRET=SECRET, REDIS_SENTINELS="h1:1,h2:2",
                             REDIS_TLS="true", REDIS_TLS_CA_FILE=files["ca"])
    assert all(s.connection_pool.connection_kwargs["ssl_ca_certs"] == files["ca"]
               for s in sentinel_for(sentinel).sentinels)
    assert connection_pool(sentinel).connection_class is SentinelManagedSSLConnection


# --- clarity doctor -----------------------------------------------------------------------

def doctor(configure, server, **settings) -> dict:
    from app.cli import main

    configure(server, **settings)
    result = CliRunner().invoke(main, ["doctor", "--json", "--no-workers", "--no-host-checks"])
    assert "Traceback" not in result.output, result.output
    return {c["name"]: c for c in json.loads(result.output)["checks"]}


def test_doctor_tls_check_names_the_ca_and_the_client_certificates_days(tls_redis, pki,
                                                                        configure):
    checks = doctor(configure, tls_redis, **with_cert(pki.client))
    tls = checks["tls"]
    assert tls["status"] == "ok" and CA_SUBJECT in tls["detail"], tls
    assert "client certificate CN=client" in tls["detail"] and "days left" in tls["detail"]
    assert checks["reachability"]["status"] == "ok"
    # The anonymous probe shows the certificate too: it is refused for want of a password.
    assert checks["auth"]["status"] == "ok", checks["auth"]

    tls = doctor(configure, tls_redis, **with_cert(pki.expiring))["tls"]
    assert tls["status"] == "warn" and "10 day(s) left" in tls["detail"], tls

    checks = doctor(configure, tls_redis, **with_cert(pki.expired))
    assert checks["tls"]["status"] == "fail" and "expired" in checks["tls"]["detail"]
    assert checks["reachability"]["status"] == "fail"
    assert "Redis refused the client certificate" in checks["reachability"]["fix"]


def test_doctor_names_a_wrong_ca_and_a_plain_port(tls_redis, redis_server, pki, configure):
    checks = doctor(configure, redis_server)
    assert checks["tls"]["status"] == "ok" and checks["tls"]["detail"].startswith("off")
    checks = doctor(configure, tls_redis, redis_tls_ca_file=pki.other_ca)
    assert checks["reachability"]["status"] == "fail"
    assert "REDIS_TLS_CA_FILE" in checks["reachability"]["fix"], checks["reachability"]
    checks = doctor(configure, redis_server, **pki.client.env)  # TLS to a plain port
    assert "Redis' plain port" in checks["reachability"]["fix"], checks["reachability"]


def test_doctor_fails_on_a_client_certificate_it_cannot_read(tls_redis, pki, configure,
                                                              tmp_path):
    from app.doctor import Doctor

    cert = tmp_path / "client.crt"
    cert.write_bytes(pki.client.cert.read_bytes())
    configure(tls_redis, redis_tls_cert_file=cert, redis_tls_key_file=pki.client.key)
    settings = get_settings()
    cert.write_text("not a certificate\n")  # replaced after the process started
    doc = Doctor(settings, check_workers=False, host_checks=False)
    doc.check_tls()
    assert [(c.name, c.status) for c in doc.results] == [("tls", "fail")]
    assert "cannot read a TLS certificate" in doc.results[0].detail
