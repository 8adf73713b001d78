"""Enqueueing: idempotency, validation before Redis, bulk, and a Redis outage that is never
silent."""

import datetime as dt

import pytest
import redis

from worker.management import QueueManager
from worker.producer import JobError, JobRequest, enqueue, enqueue_many
from worker.queues import Priority


def test_same_idempotency_key_returns_the_first_job_and_enqueues_nothing(env):
    first = enqueue("sync", "record", {"n": 1}, idempotency_key="user-1-initial")
    again = enqueue("sync", "record", {"n": 2}, idempotency_key="user-1-initial")
    assert first.created and not again.created
    assert again.id == first.id
    assert QueueManager().counts("sync")["waiting"] == 1


@pytest.mark.parametrize("kwargs, field, message", [
    ({"queue": "payments"}, "queue", "unknown queue 'payments'"),
    ({"task": "nope"}, "task", "unknown task 'nope' on queue 'sync'"),
    ({"priority": 11}, "priority", "between 1 and 10"),
    ({"priority": 0}, "priority", "between 1 and 10"),
    ({"priority": "urgent"}, "priority", "unknown priority 'urgent'"),
    ({"payload": [1, 2]}, "payload", "must be a JSON object"),
    ({"payload": {"when": object()}}, "payload", "not JSON data"),
    ({"payload": {"x": float("nan")}}, "payload", "not JSON data"),
    ({"scheduled_at": dt.datetime(2030, 1, 1)}, "scheduled_at", "timezone-aware"),
    ({"scheduled_at": dt.datetime(2001, 1, 1, tzinfo=dt.UTC)}, "scheduled_at", "in the past"),
    ({"scheduled_at": "tomorrow"}, "scheduled_at", "ISO 8601"),
    ({"delay": -5}, "delay", ">= 0"),
    ({"delay": 1, "scheduled_at": "2030-01-01T00:00:00Z"}, "delay", "not both"),
    ({"idempotency_key": ""}, "idempotency_key", "1..200"),
])
def test_bad_arguments_raise_a_clear_error_before_touching_redis(monkeypatch, configure,
                                                                 tmp_path, kwargs, field,
                                                                 message):
    # Point at a port where nothing listens: validation must fail first, not the network.
    from app.devstack.redis_server import RedisServer

    configure(RedisServer(tmp_path))  # never started
    args = {"queue": "sync", "task": "record", "payload": {"n": 1}, **kwargs}
    with pytest.raises(JobError) as info:
        enqueue(args.pop("queue"), args.pop("task"), args.pop("payload"), **args)
    assert info.value.field == field
    assert message in str(info.value)


def test_oversize_payload_is_refused(env):
    with pytest.raises(JobError, match="limit is 1024"):
        enqueue("sync", "record", {"blob": "x" * 2000}, max_payload_bytes=1024)


def test_redis_down_during_enqueue_raises_never_drops(configure, redis_factory):
    server = configure(redis_factory())
    enqueue("sync", "record", {"n": 1})
    server.kill()
    with pytest.raises(redis.ConnectionError):
        enqueue("sync", "record", {"n": 2})


def test_bulk_enqueue_is_all_or_nothing_on_validation(env):
    requests = [JobRequest("sync", "record", {"n": i}) for i in range(10)]
    requests.append(JobRequest("sync", "record", {"n": "bad"}, priority=99))
    with pytest.raises(JobError):
        enqueue_many(requests)
    assert QueueManager().counts("sync")["waiting"] == 0
    jobs = enqueue_many(requests[:10] + [JobRequest("email", "record", {"n": 10},
                                                    priority="CRITICAL")])
    assert len({j.id for j in jobs}) == 11
    counts = QueueManager().counts_all()
    assert counts["sync"]["waiting"] == 10
    assert counts["email"]["waitingByPriority"]["critical"] == 1
    assert Priority.parse("critical") == 10
