"""The Redis backup script (redis/clarity-redis-backup) against a real redis-server."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from app.devstack.processes import free_port, real_clock_env
from app.devstack.sentinel import SentinelGroup
from tests.helpers import wait_for

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "redis" / "clarity-redis-backup"
PASSWORD = "backup-test-password"

pytestmark = pytest.mark.skipif(
    not (shutil.which("redis-server") and shutil.which("redis-check-rdb")),
    reason="needs redis-server and redis-check-rdb",
)


def filesystem_now(directory: Path) -> float:
    """The clock the script and its `find` judge file ages by: the kernel's, read through a
    fresh file's mtime (under `faketime` this process's own clock is moved; theirs is not)."""
    probe = directory / ".now"
    probe.write_bytes(b"")
    try:
        return probe.stat().st_mtime
    finally:
        probe.unlink()


@pytest.fixture
def redis_port(tmp_path):
    port = free_port()
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--repl-diskless-sync-delay",
            "0",
            "--requirepass",
            PASSWORD,
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
        env=real_clock_env(),
    )
    deadline = time.monotonic() + 10
    while (
        subprocess.run(
            ["redis-cli", "-p", str(port), "--no-auth-warning", "-a", PASSWORD, "ping"],
            check=False,
            capture_output=True,
            text=True,
            env=real_clock_env(),
        ).stdout.strip()
        != "PONG"
    ):
        assert time.monotonic() < deadline, "redis-server did not start"
        time.sleep(0.05)
    subprocess.run(
        [
            "redis-cli",
            "-p",
            str(port),
            "--no-auth-warning",
            "-a",
            PASSWORD,
            "set",
            "clarity:{sync}:probe",
            "kept",
        ],
        check=True,
        capture_output=True,
        env=real_clock_env(),
    )
    yield port
    proc.terminate()
    proc.wait(10)


def _run_backup(port: int, backups: Path, textfiles: Path, **extra: str):
    env = {
        **real_clock_env(),
        "REDIS_PORT": str(port),
        "REDISCLI_AUTH": PASSWORD,
        "BACKUP_DIR": str(backups),
        "TEXTFILE_DIR": str(textfiles),
        **extra,
    }
    return subprocess.run(
        [str(SCRIPT)], check=False, env=env, capture_output=True, text=True, timeout=60
    )


def test_backup_writes_a_dated_rdb_that_redis_check_rdb_accepts(redis_port, tmp_path):
    backups, textfiles = tmp_path / "backups", tmp_path / "textfile"
    textfiles.mkdir()
    result = _run_backup(redis_port, backups, textfiles)
    assert result.returncode == 0, result.stderr
    dumps = sorted(backups.glob("dump-*.rdb"))
    assert len(dumps) == 1
    assert (
        subprocess.run(
            ["redis-check-rdb", str(dumps[0])], check=False, capture_output=True,
            env=real_clock_env(),
        ).returncode
        == 0
    )
    assert b"clarity:{sync}:probe" in dumps[0].read_bytes()
    # Group-readable: the directory's group (the shipping user's, mode 2750) may pull it.
    assert oct(dumps[0].stat().st_mode & 0o777) == "0o640"


def test_backup_prunes_files_older_than_retention_and_keeps_recent_ones(redis_port, tmp_path):
    backups, textfiles = tmp_path / "backups", tmp_path / "textfile"
    backups.mkdir()
    textfiles.mkdir()
    old, recent = backups / "dump-20000101T000000Z.rdb", backups / "dump-20000102T000000Z.rdb"
    now = filesystem_now(backups)
    for path, age_days in ((old, 8), (recent, 6)):
        path.write_bytes(b"x")
        stamp = now - age_days * 86400
        os.utime(path, (stamp, stamp))
    result = _run_backup(redis_port, backups, textfiles, BACKUP_RETENTION_DAYS="7")
    assert result.returncode == 0, result.stderr
    assert not old.exists()
    assert recent.exists()
    assert len(list(backups.glob("dump-*.rdb"))) == 2


def test_backup_exports_last_success_for_the_textfile_collector(redis_port, tmp_path):
    backups, textfiles = tmp_path / "backups", tmp_path / "textfile"
    textfiles.mkdir()
    before = int(filesystem_now(textfiles))
    assert _run_backup(redis_port, backups, textfiles).returncode == 0
    metrics = (textfiles / "clarity_redis_backup.prom").read_text()
    values = dict(
        line.split() for line in metrics.splitlines() if line and not line.startswith("#")
    )
    assert int(values["clarity_redis_backup_last_success_timestamp_seconds"]) >= before
    assert int(values["clarity_redis_backup_size_bytes"]) > 0


def test_failed_backup_exits_nonzero_and_leaves_last_success_untouched(redis_port, tmp_path):
    backups, textfiles = tmp_path / "backups", tmp_path / "textfile"
    textfiles.mkdir()
    result = _run_backup(redis_port, backups, textfiles, REDISCLI_AUTH="wrong-password")
    assert result.returncode != 0
    assert not (textfiles / "clarity_redis_backup.prom").exists()
    assert not list(backups.iterdir())


def test_with_sentinel_one_healthy_replica_backs_up_else_the_primary(tmp_path):
    """Every node's cron runs the script; one backs the fleet up: the first healthy replica
    the sentinels list (no fork on the primary), the primary once no replica is healthy."""
    group = SentinelGroup(tmp_path / "ha", replicas=2).start()
    try:
        # Else a replica a sentinel still thinks is syncing is passed over by the script.
        group.wait_replicas_healthy()
        sentinel_env = {"SENTINELS": " ".join(f"127.0.0.1:{p}" for p in group.sentinel_ports),
                        "SENTINEL_MASTER": group.master, "SELF_ADDRESS": "127.0.0.1"}
        primary, *replicas = group.nodes
        expected = min(replicas, key=lambda node: f"127.0.0.1:{node.port}")

        def backup(node, name):
            backups, textfiles = tmp_path / name / "backups", tmp_path / name / "textfile"
            textfiles.mkdir(parents=True, exist_ok=True)
            result = _run_backup(node.port, backups, textfiles, REDISCLI_AUTH=group.password,
                                 **sentinel_env)
            assert result.returncode == 0, result.stdout + result.stderr
            return sorted(backups.glob("dump-*.rdb")), textfiles / "clarity_redis_backup.prom"

        made = {node.port: backup(node, f"first-{node.port}") for node in group.nodes}
        assert [port for port, (dumps, _) in made.items() if dumps] == [expected.port]
        assert made[expected.port][1].exists()
        assert not made[primary.port][1].exists()

        for node in replicas:
            node.stop()
        wait_for(lambda: all("s_down" in r["flags"] for r in group.sentinel_client(
            group.sentinel_ports[0]).sentinel_slaves(group.master)), timeout=30)
        dumps, metric = backup(primary, "degraded")
        assert len(dumps) == 1 and metric.exists()
    finally:
        group.stop()
