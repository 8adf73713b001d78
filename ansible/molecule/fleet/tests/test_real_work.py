"""The fleet does Income Clarity's work: syncs against the aggregator land in the fleet's
PostgreSQL, email reaches the SMTP relay, a provider webhook through nginx becomes a sync,
cleanup runs once across hosts, the legacy poller drains the legacy table, and the
dashboard's migration panel has data."""

import hashlib
import hmac
import json
import time

import pytest
from conftest import http_once, podman_host
from fleet import AUTH, enqueue_and_wait, outside_world, psql, wait_for

WEBHOOK_SECRET = "molecule-webhook-secret-0123456789abcdef"


@pytest.fixture(scope="module")
def redis1():
    return podman_host("redis1")


@pytest.fixture(scope="module")
def admin1():
    return podman_host("admin1")


@pytest.fixture(scope="module")
def outside():
    return outside_world()


def new_user() -> int:
    """A user id no earlier run used (the tests may run again on the same fleet)."""
    return time.time_ns() // 1000


def synced_accounts(redis1, user_id: int) -> tuple[int, int]:
    """(linked accounts, holdings) the fleet's database holds for the user."""
    [[accounts, holdings]] = psql(redis1, f"""
        SELECT count(DISTINCT a.id), count(h.id) FROM linked_accounts a
        LEFT JOIN holdings h ON h.account_id = a.id WHERE a.user_id = {user_id}""")
    return int(accounts), int(holdings)


def test_a_sync_job_writes_the_aggregators_data_to_the_fleets_database(admin1, redis1, outside):
    user = new_user()
    enqueue_and_wait(admin1, "sync", "sync_user", {"user_id": user, "sync_type": "MANUAL"})
    expected = outside.aggregator.expected(user)
    assert expected[0] > 0
    assert synced_accounts(redis1, user) == expected
    [[status]] = psql(redis1, f"SELECT status FROM sync_log WHERE user_id = {user} "
                              "ORDER BY id DESC LIMIT 1")
    assert status == "success"


def test_an_email_job_is_delivered_through_the_smtp_relay(admin1, redis1, outside):
    to = f"welcome-{time.time_ns()}@clarity.test"
    enqueue_and_wait(admin1, "email", "send_email",
                     {"template": "welcome", "to": to, "context": {"name": "Fleet"}})
    [message] = wait_for(lambda: outside.smtp.to(to), 30, message=f"an email to {to}")
    assert "Welcome to Income Clarity, Fleet" in message["Subject"]
    assert psql(redis1, f"SELECT status FROM email_log WHERE to_address = '{to}'") == [["sent"]]


def test_a_provider_webhook_through_nginx_becomes_a_sync(admin1, redis1, outside):
    user = new_user()
    event_id = f"evt-{time.time_ns()}"
    body = json.dumps({"event": "DATA_UPDATES", "id": event_id, "user_id": user})
    timestamp = str(int(time.time()))
    signature = hmac.new(WEBHOOK_SECRET.encode(), f"{timestamp}.{body}".encode(),
                         hashlib.sha256).hexdigest()
    status, _, answer = http_once(
        admin1, "https://127.0.0.1/api/webhooks/yodlee", method="POST", body=body,
        headers={"Content-Type": "application/json", "X-Clarity-Timestamp": timestamp,
                 "X-Clarity-Signature": f"v1={signature}"})
    assert status == 202, answer
    wait_for(lambda: psql(redis1, "SELECT 1 FROM webhook_events WHERE "
                                  f"event_id = '{event_id}' AND status = 'processed'"),
             60, message="the webhook event to be processed")
    wait_for(lambda: synced_accounts(redis1, user)[0] > 0, 60,
             message=f"the webhook's sync of user {user}")
    [[sync_type]] = psql(redis1, f"SELECT sync_type FROM sync_log WHERE user_id = {user} "
                                 "AND status = 'success' LIMIT 1")
    assert sync_type == "WEBHOOK"


def test_a_badly_signed_webhook_is_refused_at_the_door(admin1):
    body = json.dumps({"event": "DATA_UPDATES", "id": "forged", "user_id": 1})
    status, _, _ = http_once(
        admin1, "https://127.0.0.1/api/webhooks/yodlee", method="POST", body=body,
        headers={"Content-Type": "application/json",
                 "X-Clarity-Timestamp": str(int(time.time())), "X-Clarity-Signature": "v1=00"})
    assert status == 401


def test_cleanup_takes_one_lock_in_the_fleets_database(admin1, redis1):
    """Both worker hosts run the cleanup queue; the lock that keeps it to one run at a time
    lives in the shared database, so a run anywhere sees a lock taken anywhere else."""
    user = new_user()
    psql(redis1, "INSERT INTO sync_log (user_id, sync_type, status, created_at) "
                 f"VALUES ({user}, 'SCHEDULED', 'success', now() - interval '400 days')")
    old = f"SELECT count(*) FROM sync_log WHERE user_id = {user}"
    psql(redis1, "INSERT INTO job_locks (name, holder, expires_at) "
                 "VALUES ('cleanup', 'a run on another host', now() + interval '10 minutes')")
    try:
        for _ in range(4):  # whichever host takes them: each finds the lock taken
            enqueue_and_wait(admin1, "cleanup", "cleanup_now", {})
        assert psql(redis1, old) == [["1"]]
    finally:
        psql(redis1, "DELETE FROM job_locks WHERE name = 'cleanup'")
    enqueue_and_wait(admin1, "cleanup", "cleanup_now", {})
    assert psql(redis1, old) == [["0"]]
    assert psql(redis1, "SELECT count(*) FROM job_locks") == [["0"]]


def test_the_legacy_poller_drains_the_legacy_table(redis1, outside):
    user = new_user()
    psql(redis1, "INSERT INTO queued_sync (user_id, sync_type, status, scheduled_at, "
                 f"created_at, updated_at) VALUES ({user}, 'SCHEDULED', 'pending', now(), "
                 "now(), now())")
    wait_for(lambda: psql(redis1, f"SELECT status FROM queued_sync WHERE user_id = {user}")
             == [["done"]], 60, message="the legacy row to be run")
    assert synced_accounts(redis1, user)[0] > 0


def test_the_dashboards_migration_panel_has_data(admin1):
    status, _, body = http_once(admin1, "https://127.0.0.1/api/admin/queue?action=overview",
                                headers=AUTH)
    assert status == 200, body
    migration = json.loads(body)["migration"]
    assert isinstance(migration, dict) and migration, body
    assert "error" not in migration, migration
