"""Redis ACL users: redis/users.acl.j2 rendered as the `redis` role deploys it, loaded by a
real redis-server (the `default` user off), each user proven able to do its work and
unable to do more. `pytest --redis-user clarity-worker tests/test_delivery.py ...` runs
whole suites as one user (see docs/deploy.md "Redis users")."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner

from app.devstack import REPO, redis_acl
from app.devstack.redis_acl import (
    ADMIN,
    BACKUP,
    EXPORTER,
    OPERATOR,
    PRODUCER,
    REPLICATION,
    SENTINEL,
    WORKER,
)
from app.devstack.redis_server import CONF, RedisServer
from app.devstack.sentinel import CONFIG_COMMAND, SentinelGroup
from tests.helpers import recorded, wait_for
from worker.settings import SettingsError, load_settings

PASSWORDS = redis_acl.test_passwords()
# What Redis says when a command a script runs is refused by the ACL.
SCRIPT_DENIED = "(?i)noperm|no permissions|user executing the script can't"
SECRET = "s" * 32


def password(user: str) -> str:
    return PASSWORDS[user][0]


@pytest.fixture
def acl_redis(tmp_path, prefix):
    """A redis-server with the ACL users, rendered for this test's key prefix."""
    server = RedisServer(tmp_path / "redis", acl=PASSWORDS, acl_prefix=prefix).start()
    yield server
    server.stop()


def refused(client: redis.Redis, *command) -> str:
    """Run `command`; it must be refused for want of permission: the error text."""
    with pytest.raises(redis.ResponseError) as caught:
        client.execute_command(*command)
    text = str(caught.value)
    assert isinstance(caught.value, redis.exceptions.NoPermissionError) or "NOPERM" in text \
        or "no permissions" in text, text
    return text


def as_(server: RedisServer, user: str, **kwargs) -> redis.Redis:
    return server.client_as(user, socket_timeout=5, **kwargs)


def job_key(prefix: str, job_id: str = "j1") -> str:
    return f"{prefix}:{{sync}}:job:{job_id}"


# --- the file and the default user --------------------------------------------------------

def test_the_default_user_is_off_and_the_file_holds_no_password_in_clear(acl_redis):
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=acl_redis.port, socket_timeout=5).ping()  # NOAUTH
    with pytest.raises(redis.AuthenticationError):  # AUTH <password> is AUTH default ...
        redis.Redis(port=acl_redis.port, password=password(OPERATOR), socket_timeout=5).ping()
    text = acl_redis.acl_path.read_text()
    assert not any(p in text for ps in PASSWORDS.values() for p in ps)
    users = {line.split()[1] for line in text.splitlines()}
    assert users == {"default", *redis_acl.USERS}
    assert sorted(u.decode() for u in acl_redis.client().execute_command("ACL", "USERS")) == \
        sorted(users)
    assert as_(acl_redis, WORKER).execute_command("ACL", "WHOAMI") == WORKER.encode()


def test_the_rules_need_a_password_for_every_user():
    with pytest.raises(ValueError, match="clarity-producer"):
        redis_acl.render({u: p for u, p in PASSWORDS.items() if u != PRODUCER})


@pytest.mark.skipif(shutil.which("ansible-playbook") is None
                    and not (Path(REPO) / ".venv/bin/ansible-playbook").exists(),
                    reason="needs ansible-playbook (ansible/requirements-ci.txt)")
def test_ansible_renders_the_same_file(tmp_path):
    """What the redis role writes to /etc/redis/users.acl is byte for byte what the tests
    load: the role's template task with the template module, here on localhost."""
    playbook = tmp_path / "render.yml"
    users = {**PASSWORDS, WORKER: ["new-worker-password-0123", password(WORKER)]}
    playbook.write_text(
        "- hosts: localhost\n  gather_facts: false\n  tasks:\n"
        "    - ansible.builtin.template:\n"
        f"        src: {REPO}/redis/users.acl.j2\n        dest: {tmp_path}/users.acl\n"
        "      vars:\n"
        f"        redis_acl_users: {users!r}\n        redis_acl_key_prefix: clarity\n")
    binary = shutil.which("ansible-playbook") or str(Path(REPO) / ".venv/bin/ansible-playbook")
    result = subprocess.run([binary, "-i", "localhost,", "-c", "local", "-e",
                             f"ansible_python_interpreter={sys.executable}", str(playbook)],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "users.acl").read_text() == redis_acl.render(users, "clarity")


# --- workers and the admin: the queue, nothing else ---------------------------------------

ADMINISTRATION = [
    (CONFIG_COMMAND, "GET", "maxmemory"),  # CONFIG under its renamed name: ACL sees CONFIG
    (CONFIG_COMMAND, "SET", "maxmemory-policy", "allkeys-lru"),
    ("ACL", "LIST"), ("ACL", "SETUSER", "intruder", "on", ">x", "+@all"), ("ACL", "LOAD"),
    ("SHUTDOWN", "NOSAVE"), ("REPLICAOF", "127.0.0.1", "1"), ("SLAVEOF", "NO", "ONE"),
    ("SCRIPT", "FLUSH"), ("SCRIPT", "KILL"), ("FUNCTION", "FLUSH"), ("CLIENT", "LIST"),
    ("CLIENT", "KILL", "ID", "1"), ("BGSAVE",), ("SAVE",), ("BGREWRITEAOF",),
    ("SWAPDB", "0", "1"), ("SORT", "x"), ("FAILOVER",), ("MONITOR",), ("SYNC",),
]


@pytest.mark.parametrize("user", [WORKER, ADMIN])
def test_workers_and_the_admin_cannot_administer_redis_or_leave_their_prefix(acl_redis,
                                                                            prefix, user):
    client = as_(acl_redis, user)
    for command in ADMINISTRATION:
        refused(client, *command)
    assert acl_redis.client().ping()  # still up: SHUTDOWN was refused
    for command in (("GET", "other:key"), ("SET", "other:key", "1"), ("DEL", "other:key"),
                    ("EVAL", "return redis.call('GET', KEYS[1])", "1", "other:key"),
                    ("PUBLISH", "__sentinel__:hello", "x"), ("SUBSCRIBE", "anything")):
        refused(client, *command)
    # A script declaring a key of its own prefix cannot reach another key behind it.
    with pytest.raises(redis.ResponseError, match=SCRIPT_DENIED):
        client.execute_command("EVAL", "return redis.call('GET', 'other:key')", "1",
                               f"{prefix}:x")
    # What the queue needs works: keys under the prefix, scripts, INFO, TIME, WAIT.
    assert client.set(f"{prefix}:x", "1") and client.get(f"{prefix}:x") == b"1"
    assert client.execute_command("EVAL", "return redis.call('INCR', KEYS[1])", "1",
                                  f"{prefix}:n") == 1
    sha = client.script_load("return 1")
    assert client.evalsha(sha, 0) == 1 and client.script_exists(sha) == [True]
    assert "redis_version" in client.info("server") and client.time()
    assert client.execute_command("WAIT", "0", "10") == 0


def test_the_acl_alone_refuses_what_redis_conf_also_renames(tmp_path, prefix):
    """FLUSHALL, FLUSHDB, KEYS and CONFIG are renamed away in redis.conf; the rules refuse
    them on their own too (a config without the renames)."""
    conf = tmp_path / "no-renames.conf"
    conf.write_text("".join(line for line in CONF.read_text().splitlines(keepends=True)
                            if not line.startswith("rename-command")))
    server = RedisServer(tmp_path / "redis", acl=PASSWORDS, acl_prefix=prefix, conf=conf)
    server.start()
    try:
        for user in (WORKER, ADMIN, PRODUCER, EXPORTER, BACKUP, REPLICATION, SENTINEL):
            client = as_(server, user)
            # (DEBUG is refused before the ACL: enable-debug-command is off by default.)
            for command in (("FLUSHALL",), ("FLUSHDB",), ("KEYS", "*"),
                            ("CONFIG", "SET", "appendonly", "no")):
                refused(client, *command)
        assert server.client(decode_responses=True).config_get("appendonly") == {
            "appendonly": "yes"}
    finally:
        server.stop()


def test_a_worker_runs_jobs_as_its_user_enqueued_by_the_producers_user(acl_redis, configure,
                                                                       workers, prefix):
    from worker.producer import enqueue

    configure(acl_redis, redis_username=PRODUCER, redis_password=password(PRODUCER))
    worker = workers(acl_redis, redis_username=WORKER, redis_password=password(WORKER))
    for n in range(5):
        enqueue("sync", "record", {"n": n})
    enqueue("sync", "record", {"n": "later"}, delay=1)

    def done():
        return sorted(as_(acl_redis, WORKER).lrange(f"{prefix}:test:done", 0, -1))

    assert wait_for(lambda: len(done()) == 6, timeout=30, message="6 jobs run") and \
        done() == sorted([str(n).encode() for n in range(5)] + [b"later"])
    assert WORKER in {c["user"] for c in acl_redis.client().client_list()}
    assert worker.proc.poll() is None


# --- producers: enqueue, and nothing that removes or takes a job ---------------------------

def test_the_producer_enqueues_but_cannot_purge_lease_or_delete_a_job(acl_redis, configure,
                                                                      prefix):
    from worker.management import QueueManager
    from worker.producer import enqueue
    from worker.queues import QueueKeys

    configure(acl_redis, redis_username=PRODUCER, redis_password=password(PRODUCER))
    job = enqueue("sync", "record", {"n": 1})
    keys = QueueKeys(prefix, "sync")
    operator = acl_redis.client()
    assert operator.zscore(keys.waiting, job.id) is not None
    producer = as_(acl_redis, PRODUCER)
    key = keys.job(job.id)
    for command in (("DEL", key), ("UNLINK", key), ("HDEL", key, "msg"), ("EXPIRE", key, "1"),
                    ("ZREM", keys.waiting, job.id), ("ZPOPMIN", keys.waiting),
                    ("RENAME", key, f"{prefix}:stolen"), ("ZREMRANGEBYRANK", keys.waiting, "0",
                                                          "-1")):
        refused(producer, *command)
    # A script is held to the same rules.
    with pytest.raises(redis.ResponseError, match=SCRIPT_DENIED):
        producer.execute_command("EVAL", "return redis.call('DEL', KEYS[1])", "1", key)
    # The operators' paths: clearing a queue, leasing a job (a worker's), both refused.
    with pytest.raises(redis.ResponseError, match=SCRIPT_DENIED):
        QueueManager().clear("sync", "waiting")
    with pytest.raises(redis.ResponseError, match=SCRIPT_DENIED):
        QueueManager().storage("sync").dequeue()
    assert operator.exists(key) and operator.zscore(keys.waiting, job.id) is not None
    for command in ADMINISTRATION:
        refused(producer, *command)


# --- the exporter: INFO and the like, no key ---------------------------------------------

def test_the_exporter_reads_info_but_cannot_read_or_find_a_job(acl_redis, prefix):
    key = job_key(prefix)
    acl_redis.client().hset(key, mapping={"msg": "signed secret payload", "state": "waiting"})
    exporter = as_(acl_redis, EXPORTER)
    for command in (("HGETALL", key), ("HGET", key, "msg"), ("GET", key), ("SCAN", "0"),
                    ("TYPE", key), ("EXISTS", key), ("MEMORY", "USAGE", key), ("DUMP", key),
                    ("OBJECT", "ENCODING", key), ("EVAL", "return 1", "0"),
                    ("SUBSCRIBE", "__sentinel__:hello"), ("DBSIZE",), ("RANDOMKEY",)):
        refused(exporter, *command)
    for command in ADMINISTRATION:
        if command[:2] not in ((CONFIG_COMMAND, "GET"), ("CLIENT", "LIST")):
            refused(exporter, *command)
    # What redis_exporter scrapes works, CONFIG GET under its renamed name included.
    assert "used_memory" in exporter.info("all")
    assert b"maxmemory" in exporter.execute_command(CONFIG_COMMAND, "GET", "maxmemory")
    assert exporter.execute_command("SLOWLOG", "LEN") >= 0
    exporter.execute_command("LATENCY", "LATEST")
    assert b"user=redis-exporter" in exporter.execute_command("CLIENT", "LIST")


# --- the backup: `redis-cli --rdb`, no key by command ------------------------------------

@pytest.mark.skipif(shutil.which("redis-check-rdb") is None, reason="needs redis-check-rdb")
def test_the_backup_user_backs_up_with_the_script_and_reads_no_key(acl_redis, prefix,
                                                                   tmp_path):
    marker = f"{prefix}:b"
    acl_redis.client().set(marker, "kept")
    env = {**os.environ, "REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(acl_redis.port),
           "BACKUP_DIR": str(tmp_path / "backups"), "TEXTFILE_DIR": ""}

    def backup(user: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["sh", str(REPO / "redis" / "clarity-redis-backup")], capture_output=True,
            text=True, timeout=60, check=False,
            env={**env, "REDIS_USER": user, "REDISCLI_AUTH": password(user)})

    result = backup(BACKUP)
    assert result.returncode == 0, result.stdout + result.stderr
    [dump] = (tmp_path / "backups").glob("dump-*.rdb")
    assert marker.encode() in dump.read_bytes()
    # Another user cannot make one: the exporter may not SYNC.
    (tmp_path / "backups" / dump.name).unlink()
    assert backup(EXPORTER).returncode != 0
    assert not list((tmp_path / "backups").glob("dump-*.rdb"))
    client = as_(acl_redis, BACKUP)
    for command in (("GET", marker), ("SCAN", "0"), ("INFO",), ("EVAL", "return 1", "0"),
                    *ADMINISTRATION[:-1]):
        refused(client, *command)


# --- replication: masteruser ---------------------------------------------------------------

def link_status(server: RedisServer) -> str:
    return server.client(socket_timeout=2).info("replication").get("master_link_status", "")


def test_a_replica_replicates_as_the_replication_user_and_no_other(acl_redis, prefix,
                                                                   tmp_path):
    acl_redis.client().set(f"{prefix}:r", "replicated")
    replicas = []
    try:
        for name, user in (("good", REPLICATION), ("bad", EXPORTER)):
            replica = RedisServer(
                tmp_path / name, acl=PASSWORDS, acl_prefix=prefix,
                extra=("--replicaof", "127.0.0.1", str(acl_redis.port), "--masteruser", user,
                       "--masterauth", password(user), "--repl-diskless-sync-delay", "0"))
            replicas.append(replica.start())
        good, bad = replicas
        wait_for(lambda: link_status(good) == "up", timeout=20, message="the replica in sync")
        assert good.client().get(f"{prefix}:r") == b"replicated"
        kinds = acl_redis.client().execute_command("CLIENT", "LIST", "TYPE", "replica")
        assert b"user=redis-replication" in kinds and b"user=redis-exporter" not in kinds
        time.sleep(2)
        assert link_status(bad) != "up" and bad.client().get(f"{prefix}:r") is None
    finally:
        for replica in replicas:
            replica.stop()
    replication = as_(acl_redis, REPLICATION)
    for command in (("GET", f"{prefix}:r"), ("SCAN", "0"), ("INFO",), *ADMINISTRATION[:-1]):
        refused(replication, *command)


# --- Sentinel: auth-user -------------------------------------------------------------------

def test_sentinels_fail_over_as_their_user_and_workers_follow_as_theirs(tmp_path, configure,
                                                                        prefix):
    from worker.connections import redis_client
    from worker.settings import get_settings

    group = SentinelGroup(tmp_path / "ha", acl=PASSWORDS, acl_prefix=prefix).start()
    try:
        old_port = group.primary_port()
        primary = group.node(old_port)
        pubsub = primary.client().execute_command("CLIENT", "LIST", "TYPE", "pubsub")
        assert b"user=redis-sentinel" in pubsub
        sentinel_user = as_(primary, SENTINEL)
        for command in (("GET", f"{prefix}:x"), ("SCAN", "0"), ("SHUTDOWN", "NOSAVE"),
                        ("ACL", "LIST"), ("SAVE",)):
            refused(sentinel_user, *command)
        configure(group, redis_username=WORKER, redis_password=password(WORKER))
        assert redis_client().set(f"{prefix}:before", "1")
        primary.kill()
        new_port = wait_for(lambda: (p := group.primary_port()) not in (None, old_port) and p,
                            timeout=30, message="a replica promoted by the sentinels")
        new_primary = group.node(new_port)
        wait_for(lambda: group.role(new_primary) == "master", timeout=15, message="promoted")
        other = next(n for n in group.nodes if n.port not in (old_port, new_port))
        wait_for(lambda: other.client().info("replication").get("master_port") == new_port
                 and link_status(other) == "up", timeout=30,
                 message="the other replica following the new primary as redis-replication")

        def write_after():
            try:
                return redis_client(get_settings()).set(f"{prefix}:after", "1")
            except redis.RedisError:
                return False

        wait_for(write_after, timeout=20, message="a write as clarity-worker after failover")
        assert new_primary.client().get(f"{prefix}:after") == b"1"
        assert new_primary.client().get(f"{prefix}:before") == b"1"
    finally:
        group.stop()


# --- rotation without downtime -------------------------------------------------------------

def test_a_password_rotates_without_downtime(acl_redis, configure, workers, prefix):
    """The runbook's steps: [new, old] in the ACL (ACL LOAD, no restart), clients move to the
    new one, then [new] only. Jobs run throughout; the old password works until dropped."""
    from worker.producer import enqueue

    old, new = password(WORKER), "rotated-worker-password-0123456789"
    configure(acl_redis, redis_username=PRODUCER, redis_password=password(PRODUCER))
    first = workers(acl_redis, redis_username=WORKER, redis_password=old)
    pid = acl_redis.client().info("server")["process_id"]

    def run(n: int) -> None:
        enqueue("sync", "record", {"n": n})
        wait_for(lambda: str(n) in recorded("done"), timeout=30, message=f"job {n} run")

    run(1)
    acl_redis.reload_acl({**PASSWORDS, WORKER: [new, old]})
    for secret in (new, old):
        assert as_(acl_redis, WORKER, password=secret).ping()
    run(2)  # the running worker, still on the old password, reconnected after ACL LOAD
    second = workers(acl_redis, redis_username=WORKER, redis_password=new)
    first.stop()
    run(3)
    acl_redis.reload_acl({**PASSWORDS, WORKER: [new]})
    with pytest.raises(redis.AuthenticationError):
        as_(acl_redis, WORKER, password=old).ping()
    assert as_(acl_redis, WORKER, password=new).ping()
    run(4)
    assert second.proc.poll() is None
    assert acl_redis.client().info("server")["process_id"] == pid  # never restarted
    assert sorted(recorded("done")) == ["1", "2", "3", "4"]


# --- settings, the CLI and `clarity doctor` ------------------------------------------------

def test_redis_username_settings_and_what_a_bad_one_says():
    base = {"JOB_SIGNING_SECRET": SECRET}
    s = load_settings(**base, REDIS_USERNAME=WORKER, REDIS_PASSWORD="p@ss:word")
    assert s.redis_target().username == WORKER
    assert redis.ConnectionPool.from_url(s.redis_connection_url()).connection_kwargs[
        "username"] == WORKER
    assert "p@ss" not in s.redis_display() and "p%40ss" not in s.redis_display()
    url = load_settings(**base, REDIS_URL="redis://clarity-admin:pw@h:1/0").redis_target()
    assert (url.username, url.password) == ("clarity-admin", "pw")
    sentinel = load_settings(
        **base, REDIS_URL="redis+sentinel://clarity-worker:pw@h1:1,h2:2/clarity/0").redis_target()
    assert (sentinel.username, sentinel.password) == (WORKER, "pw")
    with pytest.raises(SettingsError, match="REDIS_USERNAME is set but no password"):
        load_settings(**base, REDIS_USERNAME=WORKER)
    with pytest.raises(SettingsError, match="REDIS_USERNAME differs") as caught:
        load_settings(**base, REDIS_USERNAME=WORKER, REDIS_URL="redis://:hunter2hunter2@h:1/0")
    assert "hunter2" not in str(caught.value)
    with pytest.raises(SettingsError, match="REDIS_USERNAME"):
        load_settings(**base, REDIS_USERNAME="no spaces", REDIS_PASSWORD="x")


def test_doctor_names_its_user_and_a_missing_permission(acl_redis, configure):
    from app.cli import main

    configure(acl_redis, redis_username=WORKER, redis_password=password(WORKER))
    result = CliRunner().invoke(main, ["doctor", "--no-workers", "--no-host-checks"])
    assert "connected as Redis user clarity-worker" in result.output, result.output
    assert password(WORKER) not in result.output
    configure(acl_redis, redis_username=EXPORTER, redis_password=password(EXPORTER))
    result = CliRunner().invoke(main, ["doctor", "--no-workers", "--no-host-checks"])
    assert result.exit_code == 1
    assert "Redis user redis-exporter lacks permission" in result.output, result.output
    assert "docs/deploy.md#redis-users" in result.output


def test_the_cli_says_which_user_lacks_which_permission(acl_redis, configure):
    from app.cli import main
    from worker.producer import enqueue

    configure(acl_redis, redis_username=PRODUCER, redis_password=password(PRODUCER))
    enqueue("sync", "record", {"n": 1})
    result = CliRunner().invoke(main, ["queue", "clear", "sync", "--state", "waiting", "--yes"])
    assert result.exit_code == 1
    assert "Redis user clarity-producer lacks permission" in result.output, result.output
    assert "docs/deploy.md#redis-users" in result.output
    assert "Traceback" not in result.output
