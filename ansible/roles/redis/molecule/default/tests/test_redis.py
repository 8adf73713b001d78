"""The redis role: a hardened Redis that refuses strangers and never evicts jobs."""

import os
import re

import pytest
from conftest import MAX_EXPOSURE, served_serial, stranger_certificate, unit_exposure

PASSWORD = "molecule-redis-password-0123456789abcdef"
CONFIG_COMMAND = "CLARITY_CONFIG_molecule"


def cli(host, *args, password=PASSWORD, user="clarity-operator"):
    """redis-cli as the operator ACL user (the `default` user is off)."""
    auth = f"REDISCLI_AUTH={password} " if password else ""
    who = f"--user {user} " if user else ""
    return host.run(f"{auth}redis-cli {who}--no-auth-warning -h 127.0.0.1 " + " ".join(args))


def test_redis_runs_and_is_enabled(host):
    assert host.service("redis-server").is_running
    assert host.service("redis-server").is_enabled


def test_unauthenticated_clients_are_refused(host):
    assert "NOAUTH" in cli(host, "SET", "probe", "1", password=None, user=None).stdout
    wrong = cli(host, "SET", "probe", "1", password="wrong-password")
    assert "WRONGPASS" in wrong.stdout + wrong.stderr


def test_the_default_user_is_off_even_with_the_operators_password(host):
    default = cli(host, "PING", user=None)
    assert "WRONGPASS" in default.stdout + default.stderr
    assert cli(host, "ACL", "WHOAMI").stdout.strip() == "clarity-operator"


def test_the_acl_file_is_redis_only_and_holds_no_password_in_clear(host):
    acl = host.file("/etc/redis/users.acl")
    assert (acl.user, acl.group, acl.mode) == ("redis", "redis", 0o640)
    assert PASSWORD not in acl.content_string
    assert host.file("/etc/redis/redis.conf").contains("^aclfile /etc/redis/users.acl$")


def test_the_exporter_user_reads_info_but_no_key(host):
    cli(host, "SET", "clarity:probe", "secret")
    env = host.file("/etc/default/prometheus-redis-exporter").content_string
    password = env.split("REDIS_PASSWORD=", 1)[1].split()[0]
    assert "REDIS_USER=redis-exporter" in env
    got = cli(host, "GET", "clarity:probe", password=password, user="redis-exporter")
    assert "NOPERM" in got.stdout + got.stderr
    assert "redis_version" in cli(host, "INFO", "server", password=password,
                                  user="redis-exporter").stdout


def test_authenticated_clients_can_use_it(host):
    assert cli(host, "PING").stdout.strip() == "PONG"


@pytest.mark.parametrize(
    "command", ["FLUSHALL", "FLUSHDB", "KEYS *", "DEBUG SLEEP 0", "CONFIG GET maxmemory"]
)
def test_dangerous_commands_are_unknown(host, command):
    assert "unknown command" in cli(host, command).stdout.lower()


def test_config_is_renamed_from_the_vault_and_says_noeviction(host):
    out = cli(host, CONFIG_COMMAND, "GET", "maxmemory-policy").stdout.split()
    assert out == ["maxmemory-policy", "noeviction"]
    assert cli(host, CONFIG_COMMAND, "GET", "appendonly").stdout.split() == ["appendonly", "yes"]


def test_redis_listens_on_loopback_and_the_private_address(host):
    bind = cli(host, CONFIG_COMMAND, "GET", "bind").stdout.split()[1:]
    address = host.run("ip -4 -o route get 1.1.1.1").stdout.split("src ")[1].split()[0]
    assert "127.0.0.1" in bind
    assert address in bind
    assert host.socket(f"tcp://{address}:6379").is_listening


def test_config_file_is_readable_by_redis_only(host):
    conf = host.file("/etc/redis/redis.conf")
    assert conf.user == "redis"
    assert conf.mode == 0o640
    assert conf.contains(f"^rename-command CONFIG {CONFIG_COMMAND}$")
    assert not conf.contains("CHANGE_ME_REDIS_PASSWORD")


def test_kernel_settings_are_installed_and_skipped_in_a_container(host):
    sysctl = host.file("/etc/sysctl.d/99-clarity-redis.conf")
    assert sysctl.contains("^vm.overcommit_memory = 1$")
    assert sysctl.contains("^net.core.somaxconn = 65535$")
    thp = host.file("/etc/systemd/system/clarity-redis-thp.service")
    assert thp.contains("echo never > /sys/kernel/mm/transparent_hugepage/enabled")
    assert host.service("clarity-redis-thp").is_enabled
    # It runs, and its ConditionVirtualization keeps it from touching the host's kernel.
    assert host.run("systemctl start clarity-redis-thp").rc == 0
    result = host.run("systemctl show -p ConditionResult --value clarity-redis-thp")
    assert result.stdout.strip() == "no"
    assert host.run("systemd-analyze verify /etc/systemd/system/clarity-redis-thp.service").rc == 0
    # Sandboxed like every unit the roles install; the vm scenario proves it still writes THP.
    assert unit_exposure(host, "clarity-redis-thp.service") <= MAX_EXPOSURE
    wanted_by = host.run("systemctl list-dependencies --reverse --plain clarity-redis-thp")
    assert "redis-server.service" in wanted_by.stdout


def test_backup_produces_a_checked_rdb_and_prunes_old_ones(host):
    cli(host, "SET", "clarity:{sync}:backup-probe", "1")
    old = "/var/backups/redis/dump-20000101T000000Z.rdb"
    host.run(f"touch -d '10 days ago' {old}")
    run = host.run(
        "set -a && . /etc/clarity/redis-backup.env && /usr/local/sbin/clarity-redis-backup"
    )
    assert run.rc == 0, run.stderr
    newest = host.run("ls -1t /var/backups/redis/dump-*.rdb | head -n1").stdout.strip()
    assert host.run(f"redis-check-rdb {newest}").rc == 0
    assert not host.file(old).exists
    metric = host.file("/var/lib/prometheus/node-exporter/clarity_redis_backup.prom")
    assert metric.contains("^clarity_redis_backup_last_success_timestamp_seconds [0-9]")


def test_backup_is_scheduled_by_cron(host):
    cron = host.file("/etc/cron.d/clarity-redis-backup")
    assert cron.contains("/usr/local/sbin/clarity-redis-backup")
    assert host.service("cron").is_running


def test_redis_exporter_serves_metrics(host):
    out = host.run(
        "python3 -c \"import urllib.request as u; print(u.urlopen('http://127.0.0.1:9121/metrics').read().decode())\""
    )
    assert "redis_up 1" in out.stdout


def test_redis_exporter_runs_sandboxed(host):
    assert unit_exposure(host, "prometheus-redis-exporter.service") <= MAX_EXPOSURE


def test_redis_waits_for_its_private_address_and_never_stays_failed(host):
    address = host.run("ip -4 -o route get 1.1.1.1").stdout.split("src ")[1].split()[0]
    show = host.run("systemctl show -p After,StartLimitIntervalUSec,Restart redis-server").stdout
    assert f"clarity-address-online@{address}.service" in show
    assert "StartLimitIntervalUSec=0" in show
    assert "Restart=always" in show
    assert host.service(f"clarity-address-online@{address}").is_running


# --- TLS between hosts (the clarity_tls role's certificate; docs/deploy.md) ----------------

TLS = "/etc/clarity/tls"
TLS_CLI = f"--tls --cacert {TLS}/ca.crt --cert {TLS}/host.crt --key {TLS}/host.key"


def private_address(host) -> str:
    return host.run("ip -4 -o route get 1.1.1.1").stdout.split("src ")[1].split()[0]


def test_redis_config_turns_tls_on_for_clients_and_replication(host):
    conf = host.file("/etc/redis/redis.conf")
    for line in ("tls-port 6380", f"tls-cert-file {TLS}/host.crt", f"tls-key-file {TLS}/host.key",
                 f"tls-ca-cert-file {TLS}/ca.crt", "tls-auth-clients yes", "tls-replication yes",
                 'tls-protocols "TLSv1.2 TLSv1.3"'):
        assert conf.contains(f"^{line}$"), line
    live = cli(host, CONFIG_COMMAND, "GET", "tls-port").stdout.split()
    assert live == ["tls-port", "6380"]
    replication = cli(host, CONFIG_COMMAND, "GET", "tls-replication").stdout.split()
    assert replication == ["tls-replication", "yes"]


def test_the_host_key_is_made_here_and_readable_by_root_and_its_group_only(host):
    key = host.file(f"{TLS}/host.key")
    assert (key.user, key.group, key.mode) == ("root", "ssl-cert", 0o640)
    assert "ssl-cert" in host.user("redis").groups
    for public in ("host.crt", "ca.crt"):
        assert host.file(f"{TLS}/{public}").mode == 0o644
    # The certificate is of this key and of the fleet's CA.
    pub_key = host.run(f"openssl pkey -in {TLS}/host.key -pubout").stdout
    assert pub_key == host.run(f"openssl x509 -in {TLS}/host.crt -noout -pubkey").stdout
    assert host.run(f"openssl verify -CAfile {TLS}/ca.crt {TLS}/host.crt").rc == 0


def test_the_certificate_names_the_host_its_address_and_loopback(host):
    sans = host.run(f"openssl x509 -in {TLS}/host.crt -noout -ext subjectAltName").stdout
    hostname = host.run("hostname").stdout.strip()
    for name in (f"DNS:{hostname}", f"IP Address:{private_address(host)}", "IP Address:127.0.0.1"):
        assert name in sans, (name, sans)
    usage = host.run(f"openssl x509 -in {TLS}/host.crt -noout -ext extendedKeyUsage,basicConstraints").stdout
    assert "TLS Web Server Authentication" in usage and "TLS Web Client Authentication" in usage
    assert "CA:FALSE" in usage


def test_the_tls_port_answers_a_client_with_a_certificate_of_the_fleet(host):
    address = private_address(host)
    assert host.socket(f"tcp://{address}:6380").is_listening
    ping = host.run(f"REDISCLI_AUTH={PASSWORD} redis-cli {TLS_CLI} -h {address} -p 6380 "
                    "--user clarity-operator --no-auth-warning PING")
    assert ping.stdout.strip() == "PONG", ping.stdout + ping.stderr
    # The name check the Python clients make (REDIS_TLS_CHECK_HOSTNAME), on both addresses.
    for target in (address, "127.0.0.1"):
        assert served_serial(host, target)


def test_the_tls_port_refuses_a_client_without_a_certificate_or_with_another_cas(host):
    address = private_address(host)
    bare = host.run(f"redis-cli --tls --cacert {TLS}/ca.crt -h {address} -p 6380 PING")
    assert "PONG" not in bare.stdout and "NOAUTH" not in bare.stdout, bare.stdout
    cert, key = stranger_certificate(host)
    other = host.run(f"REDISCLI_AUTH={PASSWORD} redis-cli --tls --cacert {TLS}/ca.crt "
                     f"--cert {cert} --key {key} -h {address} -p 6380 "
                     "--user clarity-operator --no-auth-warning PING")
    assert "PONG" not in other.stdout, other.stdout
    host.run(f"rm -rf {os.path.dirname(cert)}")


def test_the_firewall_refuses_the_plain_port_to_other_hosts_at_once(host):
    ruleset = host.run("nft list chain inet filter input").stdout
    assert 'tcp dport 6379 reject with tcp reset comment "redis plain is for loopback"' in ruleset
    assert "tcp dport 6379 accept" not in ruleset


def test_the_expiry_of_each_certificate_reaches_node_exporter(host):
    assert host.service("clarity-tls-expiry.timer").is_enabled
    assert host.run("systemctl start clarity-tls-expiry.service").rc == 0
    metric = host.file("/var/lib/prometheus/node-exporter/clarity_tls_certificates.prom")
    assert metric.mode == 0o644
    text = metric.content_string
    for path in ("host.crt", "ca.crt"):
        pattern = rf'^clarity_tls_certificate_not_after_timestamp_seconds{{path="{TLS}/{path}",.*}} [0-9]+$'
        assert re.search(pattern, text, re.MULTILINE), (path, text)
    out = host.run("python3 -c \"import urllib.request as u; "
                   "print(u.urlopen('http://127.0.0.1:9100/metrics').read().decode())\"").stdout
    line = next(x for x in out.splitlines()
                if x.startswith("clarity_tls_certificate_not_after_timestamp_seconds")
                and "host.crt" in x)
    days_left = (float(line.split()[-1]) - float(host.run("date +%s").stdout)) / 86400
    assert 360 < days_left <= 365, line


def test_the_expiry_unit_is_sandboxed(host):
    assert host.run("systemd-analyze verify /etc/systemd/system/clarity-tls-expiry.service").rc == 0
    assert unit_exposure(host, "clarity-tls-expiry.service") <= MAX_EXPOSURE
