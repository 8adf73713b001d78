"""`clarity doctor` against real redis-servers set up right and wrong."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from app.devstack import REPO
from tests.helpers import clarity_env, wait_for
from worker.management import QueueManager
from worker.queues import QUEUE_NAMES

CONFIG_COMMAND = "CLARITY_CONFIG_b3f1c9"  # as renamed in redis/redis.conf


class Target:
    """Just enough of a RedisServer for clarity_env(): its connection settings."""

    def __init__(self, env: dict[str, str]):
        self.env = env


def doctor(server, prefix, *args):
    env = {**os.environ, **clarity_env(server, prefix), "CLARITY_ENV_FILE": "/nonexistent"}
    result = subprocess.run([sys.executable, "-m", "app", "doctor", "--json", *args], env=env,
                            cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
    assert result.stdout, result.stderr
    doc = json.loads(result.stdout)
    return result.returncode, {c["name"]: c for c in doc["checks"]}, doc


def test_doctor_passes_redis_conf_with_live_workers(redis_server, env, prefix, workers):
    workers(queues=QUEUE_NAMES, concurrency=1, lease_seconds=1.5)  # heartbeat every 0.5 s
    manager = QueueManager()
    wait_for(lambda: {w["queue"] for w in manager.workers() if w["alive"]} == set(QUEUE_NAMES),
             message="heartbeats of all five queues")
    code, checks, doc = doctor(redis_server, prefix, "--config-command", CONFIG_COMMAND)
    assert code == 0, checks
    assert doc["ok"] is True
    for name in ("reachability", "auth", "eviction", "persistence", "commands", "clock",
                 "workers:sync", "workers:notifications"):
        assert checks[name]["status"] == "ok", checks[name]


def test_doctor_flags_allkeys_lru_aof_off_exposed_commands_and_missing_workers(redis_factory,
                                                                                prefix):
    server = redis_factory("lru", extra=("--maxmemory-policy", "allkeys-lru",
                                         "--appendonly", "no"))
    code, checks, _ = doctor(server, prefix, "--queue", "sync")
    assert code == 1
    assert checks["eviction"]["status"] == "fail"
    assert "allkeys-lru" in checks["eviction"]["detail"]
    assert "noeviction" in checks["eviction"]["fix"]
    assert checks["persistence"]["status"] == "fail"
    assert checks["workers:sync"]["status"] == "fail"
    assert "clarity-worker@sync" in checks["workers:sync"]["fix"]
    assert "workers:email" not in checks  # only the queues asked for


def test_doctor_flags_a_redis_without_password_or_renames(tmp_path, prefix):
    import shutil
    import subprocess as sp

    from app.devstack.processes import free_port, real_clock_env

    assert shutil.which("redis-server")
    port = free_port()
    proc = sp.Popen(["redis-server", "--port", str(port), "--save", "", "--dir", str(tmp_path)],
                    stdout=sp.DEVNULL, env=real_clock_env())
    try:
        bare = Target({"REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(port), "REDIS_DB": "0"})
        wait_for(lambda: sp.run(["redis-cli", "-p", str(port), "ping"], capture_output=True,
                                check=False, env=real_clock_env()).stdout.strip() == b"PONG",
                 message="bare redis")
        code, checks, _ = doctor(bare, prefix, "--no-workers")
    finally:
        proc.terminate()
        proc.wait(10)
    assert code == 1
    assert checks["auth"]["status"] == "fail"
    assert checks["commands"]["status"] == "fail"
    assert "FLUSHALL" in checks["commands"]["detail"]
    assert "CONFIG" in checks["commands"]["detail"]


def test_doctor_says_how_to_fix_an_unreachable_redis_or_a_wrong_password(redis_server,
                                                                        prefix):
    from app.devstack.processes import free_port

    nowhere = Target({"REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(free_port()),
                      "REDIS_DB": "0"})
    code, checks, _ = doctor(nowhere, prefix)
    assert code == 1 and checks["reachability"]["status"] == "fail"
    assert "redis-server" in checks["reachability"]["fix"]

    wrong = Target({**redis_server.env, "REDIS_PASSWORD": "not-the-password"})
    code, checks, _ = doctor(wrong, prefix)
    assert code == 1 and checks["auth"]["status"] == "fail"


def test_doctor_reports_memory_persistence_latency_and_failed_sets(redis_factory, prefix,
                                                                   configure):
    """The runbook's checks (docs/troubleshooting.md): memory against maxmemory, the last
    save/rewrite status, PING percentiles, failed-set size and oldest entry."""
    from tests.admin.helpers import make_failed

    server = configure(redis_factory("mem"))
    client = server.client()
    make_failed(QueueManager(), "sync", 3)
    now_ms = int(client.time()[0]) * 1000
    oldest = client.zrange(f"{prefix}:{{sync}}:failed", 0, 0)[0]
    client.zadd(f"{prefix}:{{sync}}:failed", {oldest: now_ms - 8 * 86400 * 1000})
    used = client.info("memory")["used_memory"]
    client.execute_command(CONFIG_COMMAND, "SET", "maxmemory", str(int(used / 0.85)))
    _code, checks, _ = doctor(server, prefix, "--no-workers", "--no-host-checks")
    assert checks["memory"]["status"] in ("warn", "fail") and "maxmemory" in \
        checks["memory"]["detail"]
    assert checks["persistence:status"]["status"] == "ok"
    assert "p50" in checks["latency"]["detail"] and "p95" in checks["latency"]["detail"]
    assert checks["failed:sync"]["status"] == "warn"
    assert "3 failed job(s)" in checks["failed:sync"]["detail"]
    assert "8.0 day(s)" in checks["failed:sync"]["detail"]
    assert checks["failed:email"]["status"] == "ok"


def test_doctor_checks_thp_and_overcommit_on_the_redis_host(redis_server, env, tmp_path):
    from app.doctor import Doctor
    from worker.settings import get_settings

    root = tmp_path / "host"
    (root / "sys/kernel/mm/transparent_hugepage").mkdir(parents=True)
    (root / "proc/sys/vm").mkdir(parents=True)
    (root / "sys/kernel/mm/transparent_hugepage/enabled").write_text("[always] madvise never\n")
    (root / "proc/sys/vm/overcommit_memory").write_text("0\n")
    bad = {c.name: c for c in Doctor(get_settings(), check_workers=False, host_checks=True,
                                     host_root=str(root)).run()}
    assert bad["host:thp"].status == "warn" and "always" in bad["host:thp"].detail
    assert bad["host:overcommit"].status == "warn" and "sysctl" in bad["host:overcommit"].fix
    (root / "sys/kernel/mm/transparent_hugepage/enabled").write_text("always madvise [never]\n")
    (root / "proc/sys/vm/overcommit_memory").write_text("1\n")
    good = {c.name: c for c in Doctor(get_settings(), check_workers=False, host_checks=True,
                                      host_root=str(root)).run()}
    assert good["host:thp"].status == "ok" and good["host:overcommit"].status == "ok"
