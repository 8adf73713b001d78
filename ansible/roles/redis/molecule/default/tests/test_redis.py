"""The redis role: a hardened Redis that refuses strangers and never evicts jobs."""

import pytest
from conftest import MAX_EXPOSURE, unit_exposure

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
