"""QueueService routes every enqueue, reports migration figures, and follows the runtime
rollback switch within its cache period."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from app.cli import main
from app.db.engine import get_engine
from app.migration.legacy import LegacyStore, Origin
from app.queue_service import QueueService, SyncType
from worker.producer import JobError, JobRequest
from worker.queues import Priority

TASKS = ("app.jobs.sync,app.jobs.email,app.jobs.webhook,tests.jobs,"
         "tests.migration.jobs")


@pytest.fixture
def service(env, database, configure, redis_server, migration_env):
    configure(redis_server, task_modules=TASKS, database_url=database)

    def make(**values):
        migration_env(**values)
        return QueueService().initialize()

    return make


def test_sync_types_carry_their_priority_and_enable_queue_off_keeps_jobs_legacy(service):
    svc = service(enable_queue="false")
    job = svc.enqueue_sync(42, SyncType.WEBHOOK)
    assert job.route == "legacy" and job.id
    assert LegacyStore(get_engine()).counts()["origin"] == {Origin.ROUTED: 1}
    svc = service(enable_queue="true", migration_mode="immediate")
    queued = [svc.enqueue_sync(7, t) for t in SyncType]
    assert {j.route for j in queued} == {"queue"}
    jobs = {t: svc._manager().get_job("sync", j.id) for t, j in zip(SyncType, queued,
                                                                     strict=True)}
    assert jobs[SyncType.WEBHOOK]["priority"] == Priority.CRITICAL
    assert jobs[SyncType.SCHEDULED]["priority"] == Priority.NORMAL
    with pytest.raises(JobError, match="sync_type"):
        svc.enqueue_sync(7, "HOURLY")
    with pytest.raises(JobError, match="user_id"):
        svc.enqueue_sync(-1, SyncType.MANUAL)


def test_rollback_sends_new_jobs_to_legacy_and_resume_undoes_it(service):
    svc = service(enable_queue="true", migration_mode="immediate", migration_override_ttl=0)
    runner = CliRunner()
    assert svc.enqueue("sync", "count", {"n": 1}).route == "queue"
    result = runner.invoke(main, ["migrate", "rollback", "--yes"])
    assert result.exit_code == 0, result.output
    assert svc.enqueue("sync", "count", {"n": 2}).route == "legacy"
    assert svc.get_detailed_stats()["migration"]["mode"] == "legacy"
    assert runner.invoke(main, ["migrate", "resume"]).exit_code == 0
    assert svc.enqueue("sync", "count", {"n": 3}).route == "queue"
    assert runner.invoke(main, ["migrate", "set-mode", "testing", "--percentage", "0"]
                         ).exit_code == 0
    assert svc.enqueue("sync", "count", {"n": 4, "user_id": 5}).route == "legacy"


def test_detailed_stats_report_routing_backlog_and_percentage(service):
    svc = service(enable_queue="true", migration_mode="testing", migration_percentage=50)
    results = svc.enqueue_bulk([JobRequest("sync", "count", {"n": i, "user_id": i})
                                for i in range(400)])
    to_queue = sum(r.route == "queue" for r in results)
    assert 150 < to_queue < 250
    svc.dispatcher.counters.flush(svc.dispatcher.client, force=True)
    stats = svc.get_detailed_stats()
    migration = stats["migration"]
    assert migration["routed"]["queue"] == to_queue
    assert migration["routed"]["legacy"] == 400 - to_queue
    assert migration["legacyBacklog"] == 400 - to_queue
    assert migration["moved"] == 0
    assert migration["migrationPercentage"] == pytest.approx(100 * to_queue / 400, abs=0.01)
    assert stats["queues"]["sync"]["waiting"] == to_queue and stats["redisAvailable"]
    result = CliRunner().invoke(main, ["migrate", "status"])
    assert result.exit_code == 0 and "mode:        testing" in result.output, result.output
    health = svc.health_check()
    assert health["healthy"] and health["redis"]["ok"] and health["database"]["ok"]


def test_email_and_webhook_jobs_are_routed_with_the_handlers_payloads(service):
    svc = service(enable_queue="true", migration_mode="gradual",
                  migrate_high_priority="false", migrate_medium_priority="false",
                  migrate_low_priority="false")
    hook = svc.process_webhook(5, {"provider": "yodlee", "body": "{}", "headers": {}},
                               priority=Priority.CRITICAL)
    assert hook.route == "queue" and hook.queue == "webhook"  # webhooks first
    mail = svc.enqueue_email("welcome", {"to": "ann@example.com", "name": "Ann"})
    assert mail.route == "legacy" and mail.task == "send_email"
    again = svc.enqueue_email("welcome", {"to": "ann@example.com", "name": "Ann"})
    assert again.id == mail.id and not again.created  # the same email is one job
    with pytest.raises(JobError, match="priority"):
        svc.process_webhook(5, {"provider": "yodlee"}, priority=Priority.LOW)
    with pytest.raises(JobError, match="email_data"):
        svc.enqueue_email("welcome", {"name": "no address"})
    svc = service(enable_queue="true", migration_mode="immediate")
    queued = svc.enqueue_email("welcome", {"to": "bob@example.com"}, delay=60)
    job = svc._manager().get_job("email", queued.id)
    assert queued.route == "queue" and job["state"] == "delayed"
