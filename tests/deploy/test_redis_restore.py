"""Backups restore: jobs waiting, delayed and failed are backed up by redis/clarity-redis-backup,
the data is destroyed, redis/clarity-redis-restore puts the backup back with AOF on, and the
same jobs are there and run."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from app.devstack import REPO
from app.devstack.processes import real_clock_env
from tests.admin.helpers import make_failed
from tests.helpers import recorded, wait_for
from worker.management import QueueManager
from worker.producer import enqueue

BACKUP = REPO / "redis" / "clarity-redis-backup"
RESTORE = REPO / "redis" / "clarity-redis-restore"

pytestmark = pytest.mark.skipif(shutil.which("redis-check-rdb") is None,
                                reason="needs redis-check-rdb (Debian's redis-tools)")


def run(script, *args, **env):
    return subprocess.run([str(script), *map(str, args)], capture_output=True, text=True,
                          timeout=120, check=False, env={**real_clock_env(), **env})


def test_a_backup_restores_with_aof_on_and_the_same_jobs_run(configure, redis_factory, workers,
                                                             tmp_path):
    server = configure(redis_factory("primary"))  # redis.conf: appendonly yes
    manager = QueueManager()
    waiting = [enqueue("sync", "record", {"n": f"w{i}"}).id for i in range(50)]
    delayed = [enqueue("sync", "record", {"n": f"d{i}"}, delay=3).id for i in range(5)]
    failed = make_failed(manager, queue="email", n=3)
    before = {q: manager.counts(q) for q in ("sync", "email")}

    backups = tmp_path / "backups"
    result = run(BACKUP, REDIS_PORT=str(server.port), REDISCLI_AUTH=server.password,
                 BACKUP_DIR=str(backups), TEXTFILE_DIR="")
    assert result.returncode == 0, result.stderr
    [rdb] = backups.glob("dump-*.rdb")

    server.stop()
    for item in server.dir.iterdir():  # the host's data is gone
        if item.name not in ("redis.conf", "redis.log"):
            shutil.rmtree(item) if item.is_dir() else item.unlink()

    refused = run(RESTORE, tmp_path / "no-such.rdb", server.dir)
    assert refused.returncode == 2 and "no backup file" in refused.stderr
    result = run(RESTORE, rdb, server.dir)
    assert result.returncode == 0, result.stderr
    server.start()
    after = {q: manager.counts(q) for q in ("sync", "email")}
    for queue in ("sync", "email"):
        for state in ("waiting", "delayed", "failed"):
            assert after[queue][state] == before[queue][state], (queue, state)
    assert {j["id"] for j in manager.list_failed("email")["jobs"]} == set(failed)
    assert manager.check_invariants("sync") == [] and manager.check_invariants("email") == []

    server.restart()  # the restored data survives a restart: it is Redis's own AOF now
    assert manager.counts("sync")["waiting"] == len(waiting)
    workers(server=server)
    wait_for(lambda: len(recorded("done")) == len(waiting) + len(delayed), timeout=30,
             message="the restored jobs to run")
    assert manager.get_job("sync", delayed[0]) is None


def test_a_backup_that_fails_its_check_is_not_restored(tmp_path):
    broken = tmp_path / "broken.rdb"
    broken.write_bytes(b"REDIS0009 not really")
    data = tmp_path / "data"
    (data / "appendonlydir").mkdir(parents=True)
    result = run(RESTORE, broken, data)
    assert result.returncode == 1 and "redis-check-rdb" in result.stderr
    assert (data / "appendonlydir").exists() and not list(data.glob("before-restore-*"))
