"""Webhooks and notifications, with a real Redis for the follow-up jobs."""

from __future__ import annotations

import json
import time

import pytest
import sqlalchemy as sa
from huey.exceptions import CancelExecution

import app.jobs.email  # declares send_email for the fan-out
import app.jobs.sync  # noqa: F401 - declares sync_user
from app.contracts import webhook_job_payload
from app.db.schema import notifications, webhook_events
from app.jobs.notifications import create_notification
from app.jobs.webhook import process_webhook
from app.jobs.webhook_signatures import WebhookRejected, sign, verify_signature
from tests.handlers.helpers import WEBHOOK_SECRET, waiting_jobs


def job(event: dict, secret=WEBHOOK_SECRET, ts=None, received_at=None):
    body = json.dumps(event).encode()
    return webhook_job_payload("yodlee", body, sign(secret, body, ts), received_at)


def test_good_signature_enqueues_a_critical_sync(db, queue_env):
    result = process_webhook(job({"id": "evt-1", "event": "DATA_UPDATES", "user_id": 42}))
    assert result["routed_to"].startswith("sync:")
    jobs = waiting_jobs("sync")
    assert jobs == [({"user_id": 42, "sync_type": "WEBHOOK"}, 10)]
    with db.connect() as conn:
        event = conn.execute(sa.select(webhook_events)).one()
    assert event.status == "processed" and event.user_id == 42


def test_refresh_syncs_are_deduplicated_per_user_window(db, queue_env):
    now = time.time()
    process_webhook(job({"id": "evt-1", "event": "DATA_UPDATES", "user_id": 42},
                        received_at=now))
    second = process_webhook(job({"id": "evt-2", "event": "REFRESH", "user_id": 42},
                                 received_at=now))
    process_webhook(job({"id": "evt-3", "event": "REFRESH", "user_id": 43}, received_at=now))
    assert "deduplicated" in second["routed_to"]
    assert sorted(p["user_id"] for p, _ in waiting_jobs("sync")) == [42, 43]


def test_replayed_event_is_routed_once(db, queue_env):
    payload = job({"id": "evt-9", "event": "DATA_UPDATES", "user_id": 5})
    process_webhook(payload)
    again = process_webhook(payload)
    assert again["duplicate"] is True
    with db.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(webhook_events)).scalar() == 1
    assert len(waiting_jobs("sync")) == 1


@pytest.mark.parametrize("tamper", ["secret", "stale", "future", "body", "missing"])
def test_bad_or_stale_signature_is_rejected_and_nothing_enqueued(db, queue_env, tamper):
    event = {"id": "evt-x", "event": "DATA_UPDATES", "user_id": 42}
    if tamper == "secret":
        payload = job(event, secret="wrong-secret-0123456789abcdef")
    elif tamper == "stale":
        payload = job(event, ts=time.time() - 3600)
    elif tamper == "future":
        payload = job(event, ts=time.time() + 3600)
    elif tamper == "body":
        payload = job(event)
        payload["body"] = payload["body"].replace("42", "43")
    else:
        payload = job(event)
        payload["headers"] = {}
    with pytest.raises(CancelExecution):
        process_webhook(payload)
    assert waiting_jobs("sync") == []
    with db.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(webhook_events)).scalar() == 0


def test_malformed_body_is_rejected(db, queue_env):
    body = b"not json"
    payload = webhook_job_payload("yodlee", body, sign(WEBHOOK_SECRET, body))
    with pytest.raises(CancelExecution):
        process_webhook(payload)


def test_queue_backlog_does_not_make_a_good_event_stale(db, queue_env):
    received = time.time() - 3600  # signed and received an hour ago, processed now
    process_webhook(job({"id": "evt-late", "event": "DATA_UPDATES", "user_id": 1},
                        ts=received, received_at=received))
    assert len(waiting_jobs("sync")) == 1


def test_other_events_become_notifications(db, queue_env):
    result = process_webhook(job({"id": "evt-n", "event": "ACCOUNT_ADDED", "user_id": 42,
                                  "message": "A new account was linked"}))
    assert result["routed_to"].startswith("notification:")
    [(payload, _prio)] = waiting_jobs("notifications")
    assert payload["user_id"] == 42 and payload["kind"] == "provider.account_added"
    created = create_notification(payload)
    assert created["created"] is True


def test_verify_signature_accepts_rotated_secrets(handler_env):
    handler_env(webhook_secrets=f"yodlee=old-secret-0123456789ab|{WEBHOOK_SECRET}")
    body = b"{}"
    verify_signature("yodlee", body, sign(WEBHOOK_SECRET, body))
    verify_signature("yodlee", body, sign("old-secret-0123456789ab", body))
    with pytest.raises(WebhookRejected, match="unknown provider"):
        verify_signature("plaid", body, sign(WEBHOOK_SECRET, body))


def test_notifications_are_deduplicated_per_user_kind_and_window(db, queue_env):
    base = {"user_id": 1, "kind": "dividend.received", "title": "You got paid",
            "occurred_at": "2026-11-28T10:05:00+00:00", "window_seconds": 3600}
    first = create_notification(base)
    again = create_notification({**base, "occurred_at": "2026-11-28T10:55:00+00:00"})
    other_kind = create_notification({**base, "kind": "sync.failed"})
    next_hour = create_notification({**base, "occurred_at": "2026-11-28T11:01:00+00:00"})
    assert first["created"] and not again["created"]
    assert other_kind["created"] and next_hour["created"]
    with db.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(notifications)).scalar() == 3


def test_notification_email_fan_out_happens_once(db, queue_env):
    payload = {"user_id": 1, "kind": "sync.failed", "title": "Sync failed",
               "occurred_at": "2026-11-28T10:05:00+00:00",
               "email": {"to": "ada@example.com", "name": "Ada"}}
    assert create_notification(payload)["emailed"] is True
    create_notification(payload)
    emails = waiting_jobs("email")
    assert len(emails) == 1
    assert emails[0][0]["template"] == "notification"
    assert emails[0][0]["to"] == "ada@example.com"


def test_bad_notification_payload_is_not_retried(db):
    with pytest.raises(CancelExecution):
        create_notification({"kind": "x"})
