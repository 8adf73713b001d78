"""Routing: testing sends a stable ~10 % of users to the queues; gradual honours each
priority flag (webhooks first); immediate sends everything; the rollback switch wins."""

from __future__ import annotations

import pytest

from app.migration.breaker import BreakerState, CircuitBreaker
from app.migration.config import MigrationSettings, load_migration_settings
from app.migration.router import LEGACY, QUEUE, Router, user_bucket, write_override
from worker.queues import Priority
from worker.settings import SettingsError


def settings(**values) -> MigrationSettings:
    return MigrationSettings(_env_file=None, **values)


def test_testing_mode_sends_ten_percent_of_10000_users_and_always_the_same_ones():
    router = Router(settings(enable_queue=True, migration_mode="testing"))
    users = range(1, 10_001)
    first = {u for u in users if router.decide("sync", "sync_user", 5, u).target == QUEUE}
    assert 900 <= len(first) <= 1100, len(first)
    # Same users on a second pass, and for any job type of theirs.
    again = {u for u in users if router.decide("email", "send_email", 1, u).target == QUEUE}
    assert again == first
    # A different process computes the same buckets (sha256, not Python's salted hash).
    assert round(user_bucket(12345), 6) == round(user_bucket("12345"), 6)


def test_testing_percentage_is_configurable_and_monotonic():
    small = Router(settings(enable_queue=True, migration_percentage=5))
    large = Router(settings(enable_queue=True, migration_percentage=50))
    on_small = {u for u in range(10_000) if small.decide("sync", "t", 3, u).target == QUEUE}
    on_large = {u for u in range(10_000) if large.decide("sync", "t", 3, u).target == QUEUE}
    assert 400 <= len(on_small) <= 600 and 4800 <= len(on_large) <= 5200
    assert on_small <= on_large  # raising the share never moves a user back


@pytest.mark.parametrize(("high", "medium", "low"), [(True, False, False), (True, True, False),
                                                      (False, False, True), (True, True, True),
                                                      (False, False, False)])
def test_gradual_honours_each_priority_flag_and_webhooks_go_first(high, medium, low):
    router = Router(settings(enable_queue=True, migration_mode="gradual",
                             migrate_high_priority=high, migrate_medium_priority=medium,
                             migrate_low_priority=low))
    expect = {Priority.CRITICAL: high, Priority.HIGH: high, 4: medium,
              Priority.NORMAL: medium, 2: low, Priority.LOW: low}
    for priority, wanted in expect.items():
        got = router.decide("sync", "sync_user", int(priority), 7).target
        assert got == (QUEUE if wanted else LEGACY), (priority, got)
    assert router.decide("webhook", "process_webhook", 5, 7).target == QUEUE
    assert router.decide("sync", "sync_user", 10, 7, sync_type="WEBHOOK").target == QUEUE


def test_immediate_sends_all_and_enable_queue_off_sends_none():
    on = Router(settings(enable_queue=True, migration_mode="immediate"))
    off = Router(settings(enable_queue=False, migration_mode="immediate"))
    assert all(on.decide("sync", "t", p, u).target == QUEUE
               for u in range(500) for p in (1, 3, 5, 10))
    assert all(off.decide("sync", "t", p, u).target == LEGACY
               for u in range(500) for p in (1, 3, 5, 10))


def test_settings_errors_name_the_variable():
    with pytest.raises(SettingsError, match="MIGRATION_MODE"):
        load_migration_settings(migration_mode="sideways")
    with pytest.raises(SettingsError, match="MIGRATION_PERCENTAGE"):
        load_migration_settings(migration_percentage=101)


class FakeRedis:
    def __init__(self):
        self.data = {}
        self.reads = 0
        self.down = False

    def hgetall(self, key):
        import redis

        self.reads += 1
        if self.down:
            raise redis.ConnectionError("Error 111 connecting to x. Connection refused.")
        return dict(self.data.get(key, {}))

    def hset(self, key, mapping):
        self.data.setdefault(key, {}).update(mapping)

    def delete(self, key):
        return 1 if self.data.pop(key, None) is not None else 0


def test_rollback_switch_is_read_from_redis_cached_and_survives_redis_going_down():
    now = [0.0]
    client = FakeRedis()
    router = Router(settings(enable_queue=True, migration_mode="immediate",
                             migration_override_ttl=2), client, "p", clock=lambda: now[0])
    assert router.decide("sync", "t", 3, 1).target == QUEUE
    write_override(client, "p", "legacy")
    assert router.decide("sync", "t", 3, 1).target == QUEUE  # cached for 2 s
    now[0] += 2.5
    assert router.decide("sync", "t", 3, 1) .reason == "rolled back"
    for _ in range(100):
        router.decide("sync", "t", 3, 1)
    assert client.reads == 2  # one read per TTL period, not per job
    client.down = True
    now[0] += 5
    assert router.decide("sync", "t", 3, 1).target == LEGACY  # last value read stands
    client.down = False
    client.delete("p:migration:mode")
    now[0] += 5
    assert router.decide("sync", "t", 3, 1).target == QUEUE


def test_breaker_opens_after_threshold_probes_once_half_open_and_closes_on_success():
    now = [0.0]
    breaker = CircuitBreaker(failure_threshold=3, reset_seconds=5, clock=lambda: now[0])
    for _ in range(3):
        assert breaker.allow()
        breaker.failure()
    assert breaker.state is BreakerState.OPEN and not breaker.allow()
    now[0] += 5
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.allow()  # the probe
    assert not breaker.allow()  # everyone else keeps falling back meanwhile
    breaker.failure()  # probe failed: open for another period
    assert not breaker.allow()
    now[0] += 5
    assert breaker.allow()
    breaker.success()
    assert breaker.state is BreakerState.CLOSED and breaker.allow() and breaker.allow()
