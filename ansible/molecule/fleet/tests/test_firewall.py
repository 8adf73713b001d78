"""Every host loads its nftables ruleset (each container its own network namespace): Redis'
TLS port answers the hosts the inventory allows and nobody else; its plain port answers its
own host only (TLS between hosts, docs/deploy.md)."""

import socket

import pytest
from conftest import podman_host, redis_probe, stranger_certificate
from fleet import address

HOSTS = ("redis1", "worker1", "worker2", "admin1")
CONNECT = (
    "import socket, sys\n"
    "s = socket.socket(); s.settimeout(3)\n"
    "try:\n    s.connect((sys.argv[1], int(sys.argv[2]))); print('connected')\n"
    "except OSError as exc:\n    print(type(exc).__name__)\n"
)


def connect_from(host, target: str, port: int) -> str:
    return host.run(f"python3 -c \"{CONNECT}\" {target} {port}").stdout.strip()


@pytest.mark.parametrize("name", HOSTS)
def test_each_host_has_loaded_its_drop_by_default_ruleset(name):
    host = podman_host(name)
    assert host.service("nftables").is_enabled
    ruleset = host.run("nft list chain inet filter input")
    assert ruleset.rc == 0, ruleset.stderr
    assert "policy drop;" in ruleset.stdout
    # What is loaded is what is on disk, and the file passes `nft -c`.
    assert host.run("nft -c -f /etc/nftables.conf").rc == 0


def test_redis_tls_port_lets_a_worker_host_through_with_the_fleets_certificate():
    """TLS between hosts: a worker host reaches Redis' TLS port with its own certificate (the
    server's certificate names the address; NOAUTH: Redis answered, before any password)."""
    redis1, worker1 = podman_host("redis1"), podman_host("worker1")
    assert connect_from(worker1, address(redis1), 6380) == "connected"
    assert redis_probe(worker1, address(redis1), 6380).startswith("-NOAUTH"), "TLS refused"


def test_redis_plain_port_refuses_another_host_at_once():
    """Plain TCP is loopback's only: from a worker host (allowed on the TLS port) and from a
    host outside the inventory alike, a connection to the plain port is refused (reset)."""
    redis1, worker1 = podman_host("redis1"), podman_host("worker1")
    assert redis_probe(worker1, address(redis1), 6379, tls=False).startswith("ConnectionRefusedError")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((address(redis1), 6379), timeout=3)
    # Redis itself still answers its own host on loopback (the exporter, the backup).
    assert redis_probe(redis1, "127.0.0.1", 6379, tls=False).startswith("-NOAUTH")


def test_redis_tls_port_refuses_no_certificate_and_a_certificate_of_another_ca():
    redis1, worker1 = podman_host("redis1"), podman_host("worker1")
    target = address(redis1)
    assert not redis_probe(worker1, target, 6380, cert="").startswith(("-NOAUTH", "+PONG"))
    cert, key = stranger_certificate(worker1)
    refused = redis_probe(worker1, target, 6380, cert=cert, key=key)
    assert not refused.startswith(("-NOAUTH", "+PONG")), refused
    worker1.run(f"rm -rf {cert.rsplit('/', 1)[0]}")


def test_redis_tls_port_refuses_a_host_outside_the_allow_list():
    """The CI host is on the fleet's network but in no inventory group: its packets to the TLS
    port are dropped (a timeout, not even a refusal), while the same port answers a worker."""
    redis1 = podman_host("redis1")
    with pytest.raises(TimeoutError):
        socket.create_connection((address(redis1), 6380), timeout=3)


def test_postgresql_answers_app_hosts_only():
    redis1, worker2 = podman_host("redis1"), podman_host("worker2")
    assert connect_from(worker2, address(redis1), 5432) == "connected"
    with pytest.raises(TimeoutError):
        socket.create_connection((address(redis1), 5432), timeout=3)


def test_worker_health_ports_are_open_to_monitoring_not_to_strangers():
    worker1, admin1 = podman_host("worker1"), podman_host("admin1")
    assert connect_from(admin1, address(worker1), 9101) == "connected"
    with pytest.raises(TimeoutError):
        socket.create_connection((address(worker1), 9101), timeout=3)
