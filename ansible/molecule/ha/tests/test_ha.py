"""Redis that survives its host, through the deployed services (site.yml on five hosts).

In order (the tests share the fleet's state, and pytest runs them in file order):
1. the topology site.yml built: a primary, two replicas in sync, three sentinels that see
   each other, renamed commands renamed on every node and declared to Sentinel;
2. the primary's redis-server is SIGKILLed (and kept down); the sentinels promote a
   replica; jobs acknowledged before the crash all run and a job enqueued through nginx
   after it runs, with no worker restarted; the old primary rejoins as a replica;
3. site.yml run again after the failover leaves the new primary where it is;
4. one replica backs up, the backup host pulls it over its restricted key (which can do
   nothing else), the jobs are destroyed, restore.yml (dry run, then for real) brings them
   back, and they run.
Figures (failover time, restore time) go to the report .ci/molecule.sh prints.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import time
from pathlib import Path

import pytest
from conftest import (
    http_once,
    podman_host,
    redis_probe,
    run_playbook,
    served_serial,
    stranger_certificate,
)
from conftest import wait_for as _wait_for

ANSIBLE_DIR = Path(__file__).resolve().parents[3]
KEY = "molecule-admin-key-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {KEY}"}
CLARITY = "/opt/clarity/current/bin/clarity"
PYTHON = "/opt/clarity/current/bin/python"
ADMIN_ENV = "set -a && . /etc/clarity/admin.env && set +a && "
REDIS_ENV = "set -a && . /etc/clarity/redis-backup.env && set +a && "
# The operator ACL user (every command; the `default` user is off) and its test-vault password.
OPERATOR = "REDISCLI_AUTH=molecule-redis-password-0123456789abcdef "
WORKER_ENV = "set -a && . /etc/clarity/worker.env && set +a && "
# The sentinels' password, as the Redis hosts' backup settings hold it.
SENTINEL_AUTH = ("set -a && . /etc/clarity/redis-backup.env && set +a && "
                 "REDISCLI_AUTH=\"$SENTINEL_AUTH\" ")
REDIS_HOSTS = ("ha-redis1", "ha-redis2", "ha-redis3")
NO_RESTART = "/run/systemd/system/redis-server.service.d/zz-test-no-restart.conf"


def report(line: str) -> None:
    path = os.environ.get("CLARITY_FLEET_REPORT")
    if path:
        with open(path, "a", encoding="utf-8") as out:
            out.write(line.rstrip() + "\n")
    print(line)


def address(host) -> str:
    return host.run("ip -4 -o route get 1.1.1.1").stdout.split("src ")[1].split()[0]


@pytest.fixture(scope="module")
def fleet():
    hosts = {name: podman_host(name) for name in (*REDIS_HOSTS, "ha-worker1", "ha-admin1")}
    addresses = {name: address(host) for name, host in hosts.items() if name in REDIS_HOSTS}
    return hosts, addresses


def sentinel(host, *args: str) -> list[str]:
    """A command to the sentinel on `host`: its reply lines."""
    result = host.run(SENTINEL_AUTH + "redis-cli -p 26379 --no-auth-warning "
                      + " ".join(shlex.quote(a) for a in args))
    assert result.rc == 0, result.stderr
    return result.stdout.splitlines()


def redis(host, *args: str):
    """A command to the Redis node on `host`, as the operator (the testinfra result)."""
    return host.run(OPERATOR + "redis-cli -h 127.0.0.1 --user clarity-operator "
                    "--no-auth-warning " + " ".join(shlex.quote(a) for a in args))


def redis_as(host, user: str, password: str, *args: str):
    """A command to the Redis node on `host` as ACL user `user` (stdout and stderr)."""
    result = host.run(f"REDISCLI_AUTH={shlex.quote(password)} redis-cli -h 127.0.0.1 "
                      f"--user {user} --no-auth-warning "
                      + " ".join(shlex.quote(a) for a in args))
    return result.stdout + result.stderr


def env_value(host, path: str, name: str) -> str:
    line = next(line for line in host.file(path).content_string.splitlines()
                if line.startswith(name + "="))
    return line.split("=", 1)[1].strip().strip('"')


def client_users(host, kind: str) -> set[str]:
    """The ACL users of the node's connected clients of a type (normal, replica, pubsub)."""
    lines = redis(host, "CLIENT", "LIST", "TYPE", kind).stdout.splitlines()
    return {field.split("=", 1)[1] for line in lines for field in line.split()
            if field.startswith("user=")}


def replication(host) -> dict[str, str]:
    result = redis(host, "INFO", "replication")
    if result.rc != 0 or ":" not in result.stdout:
        return {}
    return dict(line.split(":", 1) for line in result.stdout.replace("\r", "").splitlines()
                if ":" in line)


def primary_by_sentinels(hosts, addresses, asked=REDIS_HOSTS) -> str | None:
    """The host the sentinels name as primary (asking the first that answers)."""
    by_address = {a: n for n, a in addresses.items()}
    for name in asked:
        result = hosts[name].run(SENTINEL_AUTH + "redis-cli -p 26379 --no-auth-warning "
                                 "SENTINEL get-master-addr-by-name clarity")
        lines = result.stdout.split()
        if result.rc == 0 and lines and lines[0] in by_address:
            return by_address[lines[0]]
    return None


def healthy_replicas(host) -> list[str]:
    """ip:port of the replicas the sentinel on `host` sees as healthy (what the backup
    script picks from: flags exactly "slave", master link ok)."""
    lines = sentinel(host, "SENTINEL", "replicas", "clarity")
    healthy, record = [], {}
    for key, value in zip(lines[0::2], lines[1::2], strict=True):
        if key == "name" and record:
            healthy.append(record)
            record = {}
        record[key] = value
    if record:
        healthy.append(record)
    return [f"{r['ip']}:{r['port']}" for r in healthy
            if r.get("flags") == "slave" and r.get("master-link-status") == "ok"]


def admin_python(admin, code: str) -> str:
    """Python in the admin host's release venv with the admin's settings: its stdout."""
    result = admin.run(ADMIN_ENV + f"{PYTHON} -c {shlex.quote(code)}")
    assert result.rc == 0, result.stdout + result.stderr
    return result.stdout


def enqueue_pings(admin, count: int, delay: float | None, tag: str) -> list[str]:
    """`count` ping jobs on sync from one producer process: their ids (acknowledged)."""
    out = admin_python(admin, (
        "import json\nfrom worker.producer import enqueue\n"
        f"ids = [enqueue('sync', 'ping', {{'echo': '{tag}-%d' % i}}, delay={delay!r}).id "
        f"for i in range({count})]\nprint(json.dumps(ids))"))
    return json.loads(out.strip().splitlines()[-1])


def jobs_left(admin, ids: list[str]) -> dict[str, str]:
    """Jobs of `ids` still known to Redis, with their state (an acknowledged job is gone)."""
    out = admin_python(admin, (
        "import json, sys\nfrom worker.management import QueueManager\n"
        "m = QueueManager()\n"
        f"ids = {ids!r}\n"
        "print(json.dumps({i: (m.get_job('sync', i) or {}).get('state') for i in ids}))"))
    states = json.loads(out.strip().splitlines()[-1])
    return {i: s for i, s in states.items() if s is not None}


def counts(admin) -> dict:
    """The sync queue's counts (`clarity stats --json`)."""
    result = admin.run(ADMIN_ENV + CLARITY + " stats --json")
    assert result.rc == 0, result.stdout + result.stderr
    return json.loads(result.stdout)["sync"]


def playbook(*args: str, timeout: int = 1500) -> tuple[subprocess.CompletedProcess, float]:
    return run_playbook("ha", *args, timeout=timeout)


def wait_for(predicate, timeout: float, message: str):
    return _wait_for(predicate, timeout, message, interval=0.5)


def worker_pid(worker) -> str:
    return worker.run("systemctl show -p MainPID --value clarity-worker@sync").stdout.strip()


# --- 1. what site.yml built -------------------------------------------------------------

def test_one_primary_two_replicas_in_sync_and_three_sentinels_that_agree(fleet):
    hosts, addresses = fleet
    assert primary_by_sentinels(hosts, addresses) == "ha-redis1"
    assert replication(hosts["ha-redis1"])["role"] == "master"
    for name in ("ha-redis2", "ha-redis3"):
        info = replication(hosts[name])
        assert info["role"] == "slave", (name, info)
        assert info["master_host"] == addresses["ha-redis1"]
        assert info["master_port"] == "6380"  # replication over TLS
        assert info["master_link_status"] == "up"
    # min-replicas-to-write 1 (three nodes): both replicas count as good ones.
    assert replication(hosts["ha-redis1"])["min_slaves_good_slaves"] == "2"
    for name in REDIS_HOSTS:
        master = dict(zip(*[iter(sentinel(hosts[name], "SENTINEL", "master", "clarity"))] * 2,
                          strict=True))
        assert master["num-other-sentinels"] == "2", (name, master)
        assert master["num-slaves"] == "2", (name, master)
        assert master["quorum"] == "2"


def test_dangerous_commands_stay_renamed_on_every_node_and_sentinel_knows_config(fleet):
    hosts, _ = fleet
    for name in REDIS_HOSTS:
        host = hosts[name]
        for command in ("FLUSHALL", "FLUSHDB", "KEYS", "DEBUG", "CONFIG"):
            reply = redis(host, command, "x").stdout
            assert "unknown command" in reply, (name, command, reply)
        # Sentinel's failover runs CONFIG REWRITE under the renamed name.
        renamed = host.run("grep -E '^rename-command CONFIG ' /etc/redis/redis.conf").stdout.split()[2]
        declared = host.run("grep -E '^sentinel rename-command clarity \"?CONFIG\"? ' "
                            "/etc/redis/sentinel.conf").stdout.split()
        assert declared and declared[-1].strip('"') == renamed, name
        assert redis(host, renamed, "GET", "maxmemory-policy").stdout.split()[-1] == "noeviction"


def test_clients_find_the_primary_through_the_sentinels(fleet):
    hosts, addresses = fleet
    for name, env in (("ha-worker1", "/etc/clarity/worker.env"),
                      ("ha-admin1", "/etc/clarity/admin.env")):
        text = hosts[name].file(env).content_string
        assert "REDIS_HOST=" not in text
        sentinels = next(line for line in text.splitlines()
                         if line.startswith("REDIS_SENTINELS=")).split("=", 1)[1].split(",")
        assert sorted(s.rsplit(":", 1)[0] for s in sentinels) == sorted(addresses.values())
    doctor = hosts["ha-admin1"].run(ADMIN_ENV + CLARITY + " doctor")
    assert addresses["ha-redis1"] in doctor.stdout, doctor.stdout + doctor.stderr


def test_redis_users_each_client_its_own_and_no_more(fleet):
    """redis/users.acl.j2 as deployed: the `default` user is off; replicas, sentinels,
    the worker and the admin are connected as their own users; the exporter reads INFO but
    no job; the worker cannot run CONFIG, ACL, SHUTDOWN or REPLICAOF."""
    hosts, _ = fleet
    primary = hosts["ha-redis1"]
    for name in REDIS_HOSTS:
        host = hosts[name]
        anonymous = host.run("redis-cli -h 127.0.0.1 PING")
        assert "NOAUTH" in anonymous.stdout + anonymous.stderr, name
        as_default = host.run(OPERATOR + "redis-cli -h 127.0.0.1 --no-auth-warning PING")
        assert "WRONGPASS" in as_default.stdout + as_default.stderr, name
        acl = host.file("/etc/redis/users.acl")
        assert (acl.user, acl.mode) == ("redis", 0o640)
        assert "molecule-redis-" not in acl.content_string, "a password in clear"
    assert client_users(primary, "replica") == {"redis-replication"}
    assert "redis-sentinel" in client_users(primary, "pubsub")
    normal = client_users(primary, "normal")
    assert "clarity-worker" in normal, normal  # the exporter and admin connect on demand
    # A job's hash, readable by the operator: the exporter may not read it, or scan for it.
    job_key = "clarity:{sync}:job:acl-probe"
    assert redis(primary, "HSET", job_key, "msg", "secret").stdout.strip() == "1"
    exporter = "/etc/default/prometheus-redis-exporter"
    assert env_value(primary, exporter, "REDIS_USER") == "redis-exporter"
    exporter_password = env_value(primary, exporter, "REDIS_PASSWORD")
    for command in (("HGETALL", job_key), ("GET", job_key), ("SCAN", "0"), ("TYPE", job_key)):
        reply = redis_as(primary, "redis-exporter", exporter_password, *command)
        assert "NOPERM" in reply, (command, reply)
    assert "role:master" in redis_as(primary, "redis-exporter", exporter_password,
                                     "INFO", "replication")
    metrics = primary.run("python3 -c \"import urllib.request; print(urllib.request.urlopen("
                          "'http://127.0.0.1:9121/metrics', timeout=10).read().decode())\"")
    assert "\nredis_up 1" in metrics.stdout, metrics.stdout[-2000:]
    assert redis(primary, "DEL", job_key).stdout.strip() == "1"
    # The worker's own user, through the worker's settings and release.
    worker = hosts["ha-worker1"]
    # CONFIG under its renamed name (unknown as CONFIG): the ACL refuses it by its real name.
    config = primary.run("grep -E '^rename-command CONFIG ' /etc/redis/redis.conf").stdout.split()[2]
    assert env_value(worker, "/etc/clarity/worker.env", "REDIS_USERNAME") == "clarity-worker"
    denied = worker.run(WORKER_ENV + f"{PYTHON} -c " + shlex.quote(
        "import redis\nfrom worker.connections import redis_client\nr = redis_client()\n"
        "print('whoami', r.execute_command('ACL', 'WHOAMI').decode())\n"
        f"for cmd in (({config!r}, 'GET', 'maxmemory'), ('ACL', 'LIST'), ('SHUTDOWN', 'NOSAVE'),\n"
        "            ('REPLICAOF', 'NO', 'ONE'), ('SCRIPT', 'FLUSH'), ('GET', 'other:key')):\n"
        "    try:\n"
        "        r.execute_command(*cmd)\n"
        "        print('allowed', cmd[0])\n"
        "    except redis.exceptions.NoPermissionError:\n"
        "        print('denied', cmd[0])\n"))
    assert denied.rc == 0, denied.stdout + denied.stderr
    lines = denied.stdout.split("\n")
    assert "whoami clarity-worker" in lines
    for command in (config, "ACL", "SHUTDOWN", "REPLICAOF", "SCRIPT", "GET"):
        assert f"denied {command}" in lines, denied.stdout
    report("Redis ACL users on the ha fleet: default off; replication, sentinel, worker, "
           "admin, exporter connected as their own users; exporter and worker refused")


def laddr_ports(host, kind: str, user: str | None = None) -> set[str]:
    """The local ports of the node's connected clients of a type (normal, replica, pubsub),
    of one ACL user or all: the port each came in on."""
    ports = set()
    for line in redis(host, "CLIENT", "LIST", "TYPE", kind).stdout.splitlines():
        fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
        if user is None or fields.get("user") == user:
            ports.add(fields["laddr"].rsplit(":", 1)[1])
    return ports


def test_tls_between_hosts_replication_sentinels_and_clients(fleet):
    """TLS between hosts (docs/deploy.md): replicas replicate and sentinels watch over the TLS
    ports; a host outside Redis gets a refusal on the plain ports at once, an answer on the
    TLS ports with its own certificate, and a refusal with a certificate of another CA."""
    hosts, addresses = fleet
    primary, worker = hosts["ha-redis1"], hosts["ha-worker1"]
    # Replication and Sentinel came in on the primary's TLS port.
    assert laddr_ports(primary, "replica") == {"6380"}
    assert laddr_ports(primary, "pubsub", "redis-sentinel") == {"6380"}
    assert laddr_ports(primary, "normal", "redis-sentinel") == {"6380"}
    for name in REDIS_HOSTS:
        master = dict(zip(*[iter(sentinel(hosts[name], "SENTINEL", "master", "clarity"))] * 2,
                          strict=True))
        assert master["port"] == "6380", (name, master)
        # The other sentinels, as they announced themselves: their TLS port.
        others = sentinel(hosts[name], "SENTINEL", "sentinels", "clarity")
        ports = [v for k, v in zip(others[0::2], others[1::2], strict=True) if k == "port"]
        assert ports == ["26380", "26380"], (name, others)
        replicas = sentinel(hosts[name], "SENTINEL", "replicas", "clarity")
        ports = [v for k, v in zip(replicas[0::2], replicas[1::2], strict=True) if k == "port"]
        assert ports == ["6380", "6380"], (name, replicas)
    # From a host that is no Redis host (the worker's): every node, both services.
    for name in REDIS_HOSTS:
        target = addresses[name]
        for port in (6379, 26379):
            refused = redis_probe(worker, target, port, tls=False)
            assert refused.startswith("ConnectionRefusedError"), (name, port, refused)
        for port in (6380, 26380):
            answered = redis_probe(worker, target, port)
            assert answered.startswith("-NOAUTH"), (name, port, answered)
    cert, key = stranger_certificate(worker)
    for port in (6380, 26380):
        for client_cert, client_key in ((cert, key), ("", "")):
            refused = redis_probe(worker, addresses["ha-redis1"], port, cert=client_cert,
                                  key=client_key)
            assert not refused.startswith(("-NOAUTH", "+PONG")), (port, client_cert, refused)
    worker.run(f"rm -rf {cert.rsplit('/', 1)[0]}")
    # The worker's and the admin's own connections: over TLS, to the sentinels' TLS ports.
    for name, env in (("ha-worker1", "/etc/clarity/worker.env"), ("ha-admin1", "/etc/clarity/admin.env")):
        assert env_value(hosts[name], env, "REDIS_TLS") == "true"
        sentinels = env_value(hosts[name], env, "REDIS_SENTINELS").split(",")
        assert {s.rsplit(":", 1)[1] for s in sentinels} == {"26380"}
    assert laddr_ports(primary, "normal", "clarity-worker") == {"6380"}
    report("TLS between hosts on the ha fleet: replication and Sentinel on 6380/26380, plain "
           "ports refused to the worker host, a stranger CA's certificate refused")


# --- 2. the primary dies ----------------------------------------------------------------

def test_primary_killed_replica_promoted_jobs_run_without_worker_restart_old_primary_rejoins(
        fleet):
    hosts, addresses = fleet
    admin, worker, old = hosts["ha-admin1"], hosts["ha-worker1"], hosts["ha-redis1"]
    pid_before = worker_pid(worker)
    # Acknowledged before the crash, due after it: they are in Redis when the primary dies.
    before = enqueue_pings(admin, 20, delay=25, tag="before-failover")

    # The host's Redis crashes and stays down (no Restart= for this test).
    assert old.run(f"mkdir -p {Path(NO_RESTART).parent} && printf '[Service]\\nRestart=no\\n' "
                   f"> {NO_RESTART} && systemctl daemon-reload").rc == 0
    killed = time.monotonic()
    assert old.run("systemctl kill --signal=SIGKILL redis-server").rc == 0
    wait_for(lambda: old.run("systemctl is-active redis-server").stdout.strip() != "active",
             30, "redis-server on ha-redis1 to be down")

    survivors = ("ha-redis2", "ha-redis3")
    new_name = wait_for(
        lambda: (p := primary_by_sentinels(hosts, addresses, survivors)) != "ha-redis1" and p,
        90, "the sentinels to promote a replica")
    promoted = wait_for(lambda: replication(hosts[new_name]).get("role") == "master"
                        and time.monotonic(), 60, f"{new_name} to be master")
    report(f"failover: primary SIGKILLed -> {new_name} promoted in {promoted - killed:.1f} s "
           f"(down-after-milliseconds 5000)")

    # A job through nginx (the admin API) after the failover runs.
    body = json.dumps({"queue": "sync", "task": "ping", "payload": {"echo": "after-failover"}})

    def enqueue_via_nginx():
        status, _, payload = http_once(admin, "https://127.0.0.1/api/jobs", method="POST",
                                       body=body,
                                       headers={**AUTH, "Content-Type": "application/json"})
        return status == 201 and json.loads(payload)["id"]

    after = wait_for(enqueue_via_nginx, 60, "an enqueue through nginx to succeed")
    accepted = time.monotonic()
    wait_for(lambda: not jobs_left(admin, [after]), 120, "the job enqueued after the failover")
    ran = time.monotonic()
    report(f"failover: first enqueue through nginx accepted {accepted - killed:.1f} s after the "
           f"kill, its job done {ran - killed:.1f} s after")

    # Every job acknowledged before the crash ran (gone = acknowledged by a worker), none
    # failed or is stranded in flight.
    wait_for(lambda: not jobs_left(admin, before), 180,
             "the jobs enqueued before the failover to run")
    state = counts(admin)
    assert state["failed"] == 0 and state["active"] == 0, state
    # No worker was restarted to follow the new primary.
    assert worker_pid(worker) == pid_before
    assert worker.run("systemctl show -p NRestarts --value clarity-worker@sync").stdout.strip() == "0"

    # The old primary comes back: Sentinel turns it into a replica of the new one.
    assert old.run(f"rm -f {NO_RESTART} && systemctl daemon-reload && systemctl reset-failed "
                   "redis-server; systemctl start redis-server").rc == 0
    back = time.monotonic()
    wait_for(lambda: (i := replication(old)).get("role") == "slave"
             and i.get("master_host") == addresses[new_name]
             and i.get("master_link_status") == "up", 120, "ha-redis1 to rejoin as a replica")
    report(f"failover: old primary restarted, replica of {new_name} in sync after "
           f"{time.monotonic() - back:.1f} s")
    assert replication(hosts[new_name])["connected_slaves"] == "2"


# --- 3. Ansible after a failover ----------------------------------------------------------

def test_site_yml_after_a_failover_keeps_the_new_primary_and_restarts_no_redis(fleet):
    hosts, addresses = fleet
    primary = primary_by_sentinels(hosts, addresses)
    assert primary != "ha-redis1"
    pids = {n: hosts[n].run("systemctl show -p MainPID --value redis-server").stdout.strip()
            for n in REDIS_HOSTS}
    result, seconds = playbook("site.yml", "--tags", "redis", timeout=900)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    report(f"site.yml --tags redis after the failover: {seconds:.0f} s")
    assert primary_by_sentinels(hosts, addresses) == primary
    assert {n: hosts[n].run("systemctl show -p MainPID --value redis-server").stdout.strip()
            for n in REDIS_HOSTS} == pids
    for name in REDIS_HOSTS:
        info = replication(hosts[name])
        if name == primary:
            assert info["role"] == "master"
        else:
            assert info["role"] == "slave" and info["master_host"] == addresses[primary]
            # What Redis reads at its next start: the same role.
            conf = hosts[name].file("/etc/redis/redis.conf").content_string
            assert f"replicaof {addresses[primary]} 6380" in conf  # its TLS port


# --- 4. backups leave the host, and restore -----------------------------------------------

def test_backup_shipped_off_host_then_restore_yml_brings_the_jobs_back_and_they_run(fleet):
    hosts, addresses = fleet
    admin, worker = hosts["ha-admin1"], hosts["ha-worker1"]
    primary = primary_by_sentinels(hosts, addresses)

    # Jobs that stay: the sync worker is stopped, some wait, some are delayed.
    assert worker.run("systemctl stop clarity-worker@sync").rc == 0
    waiting = enqueue_pings(admin, 6, delay=None, tag="restore-waiting")
    delayed = enqueue_pings(admin, 4, delay=90, tag="restore-delayed")
    assert (counts(admin)["waiting"], counts(admin)["delayed"]) == (6, 4)

    # Every Redis host's cron job runs; one node backs the fleet up: a healthy replica.
    wait_for(lambda: len(healthy_replicas(hosts[primary])) == 2, 60,
             "the sentinels to see both replicas healthy")
    made = {}
    for name in REDIS_HOSTS:
        run = hosts[name].run("set -a && . /etc/clarity/redis-backup.env && set +a && "
                              "/usr/local/sbin/clarity-redis-backup")
        assert run.rc == 0, (name, run.stdout, run.stderr)
        made[name] = "wrote" in run.stdout
    backed_up = [n for n, wrote in made.items() if wrote]
    assert len(backed_up) == 1 and backed_up[0] != primary, made

    # The backup host pulls it.
    pull = admin.run("set -a && . /etc/clarity/redis-backup-pull.env && set +a && "
                     "/usr/local/sbin/clarity-redis-backup-pull")
    assert pull.rc == 0, pull.stdout + pull.stderr
    # (The newest copy: the hosts' own cron jobs may have added one meanwhile.)
    shipped = admin.run(f"ls -t /var/backups/redis-shipped/{backed_up[0]}/").stdout.split()
    assert shipped and shipped[0].startswith("dump-"), shipped
    made_here = hosts[backed_up[0]].run("ls -t /var/backups/redis/").stdout.split()
    assert shipped[0] == made_here[0]
    backup = f"/var/backups/redis-shipped/{backed_up[0]}/{shipped[0]}"

    # The pulling key can do nothing else: no shell, no writes.
    ssh = ("ssh -i /etc/clarity/backup-ssh/id_ed25519 -o BatchMode=yes "
           "-o UserKnownHostsFile=/etc/clarity/backup-ssh/known_hosts "
           f"clarity-backup@{addresses[backed_up[0]]}")
    shell = admin.run(f"{ssh} id")
    assert shell.rc != 0 and "uid=" not in shell.stdout, shell.stdout
    push = admin.run(f"rsync -e '{ssh.rsplit(' ', 1)[0]}' /etc/hostname "
                     f"clarity-backup@{addresses[backed_up[0]]}:./planted.rdb")
    assert push.rc != 0
    assert not hosts[backed_up[0]].file("/var/backups/redis/planted.rdb").exists

    # The data is lost.
    for state in ("waiting", "delayed"):
        cleared = admin.run(ADMIN_ENV + CLARITY + f" queue clear sync --state {state} --yes")
        assert cleared.rc == 0, cleared.stdout + cleared.stderr
    assert (counts(admin)["waiting"], counts(admin)["delayed"]) == (0, 0)

    # A dry run changes nothing.
    dry, _ = playbook("restore.yml", "-e", f"redis_backup={backup}")
    assert dry.returncode == 0, dry.stdout[-4000:] + dry.stderr[-2000:]
    assert "DRY RUN" in dry.stdout
    assert admin.run("systemctl is-active clarity-admin").stdout.strip() == "active"
    assert (counts(admin)["waiting"], counts(admin)["delayed"]) == (0, 0)

    # The restore, workers left stopped to look first.
    result, seconds = playbook("restore.yml", "-e", f"redis_backup={backup}",
                               "-e", "redis_restore_apply=true",
                               "-e", "redis_restore_start_workers=false")
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    report(f"restore.yml (10 jobs, fetch + stop + restore + replicas resync + start): "
           f"{seconds:.0f} s")
    assert primary_by_sentinels(hosts, addresses) == primary
    assert admin.run("systemctl is-active clarity-admin").stdout.strip() == "active"
    back = counts(admin)
    assert back["waiting"] + back["delayed"] == 10 and back["waiting"] >= 6, back
    assert set(jobs_left(admin, waiting + delayed)) == set(waiting + delayed)
    for name in REDIS_HOSTS:
        if name != primary:
            info = replication(hosts[name])
            assert info["master_host"] == addresses[primary] and info["master_link_status"] == "up"

    # And they run.
    assert worker.run("systemctl start clarity-worker@sync").rc == 0
    wait_for(lambda: not jobs_left(admin, waiting), 120, "the restored waiting jobs to run")
    wait_for(lambda: not jobs_left(admin, delayed), 180, "the restored delayed jobs to run")
    assert counts(admin)["failed"] == 0


# --- 5. certificates renewed in place -------------------------------------------------------

def test_certificates_near_their_end_are_reissued_and_redis_serves_them_without_a_restart(fleet):
    """site.yml with a renewal window longer than the certificates have left (400 of 365
    days) re-issues every host's certificate with the host's own key; each Redis node serves
    its new certificate without a restart (CONFIG SET), the sentinels restart on theirs, and
    replication, Sentinel and a client's new connection all work across the new ones."""
    hosts, addresses = fleet
    primary = primary_by_sentinels(hosts, addresses)
    before = {n: served_serial(hosts[n], addresses[n]) for n in REDIS_HOSTS}
    pids = {n: hosts[n].run("systemctl show -p MainPID --value redis-server").stdout.strip()
            for n in REDIS_HOSTS}
    keys = {n: hosts[n].file("/etc/clarity/tls/host.key").content_string for n in hosts}
    result, seconds = playbook("site.yml", "--tags", "tls,redis", "-e", "clarity_tls_cert_valid_days=800",
                               "-e", "clarity_tls_renew_days=400", timeout=1500)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert result.stdout.count("new certificate (expires within 400 days)") == len(hosts), \
        result.stdout[-4000:]
    report(f"site.yml --tags tls,redis re-issuing every certificate (5 hosts): {seconds:.0f} s")
    for name in REDIS_HOSTS:
        host = hosts[name]
        after = served_serial(host, addresses[name])
        assert after != before[name], name
        assert host.run("openssl x509 -in /etc/clarity/tls/host.crt -noout -serial"
                        ).stdout.strip() == f"serial={after}"
        assert host.run("systemctl show -p MainPID --value redis-server").stdout.strip() == pids[name]
        assert served_serial(host, addresses[name], 26380) == after  # the restarted sentinel
    for name, host in hosts.items():
        assert host.file("/etc/clarity/tls/host.key").content_string == keys[name], name
    assert primary_by_sentinels(hosts, addresses) == primary
    for name in REDIS_HOSTS:
        if name != primary:
            wait_for(lambda n=name: replication(hosts[n]).get("master_link_status") == "up", 60,
                     f"{name}'s replication link after the renewal")
        wait_for(lambda n=name: dict(zip(*[iter(sentinel(hosts[n], "SENTINEL", "master", "clarity"))] * 2,
                                         strict=True)).get("num-other-sentinels") == "2",
                 90, f"the sentinel on {name} to see the other two again")
    # A client's new connection: the admin's, through the sentinels, to the primary.
    assert counts(hosts["ha-admin1"])["failed"] == 0
