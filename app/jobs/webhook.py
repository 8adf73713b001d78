"""Provider webhooks: verify, store, route.

The admin app's intake endpoint verifies the signature (app.jobs.webhook_signatures) and enqueues
`process_webhook` with the raw body, the signature headers and the time it received the
request; this handler verifies again (the body is the provider's word, not ours), stores
the event once, and routes it:
- data-refresh events -> a CRITICAL sync of the user, at most one per user per
  SYNC_WEBHOOK_WINDOW_SECONDS (idempotency key per user and window);
- everything else -> a notification.

Redelivery: webhook_events is unique per (provider, event id), the sync and the
notification are enqueued with keys derived from the event, and the event is only marked
processed after routing; a redelivery at any point routes at most once.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import time

import sqlalchemy as sa
from huey.exceptions import CancelExecution
from sqlalchemy.engine import Engine

from app.db.engine import dialect_insert, get_engine
from app.db.schema import utcnow, webhook_events
from app.jobs.settings import HandlerSettings, get_handler_settings
from app.jobs.webhook_signatures import WebhookRejected, verify_signature
from worker.queues import Priority
from worker.registry import task

log = logging.getLogger("clarity.tasks.webhook")

REFRESH_EVENTS = {"DATA_UPDATES", "REFRESH", "AUTO_REFRESH_UPDATES", "DATA_REFRESH",
                  "ACCOUNT_REFRESHED", "HOLDINGS_UPDATED", "TRANSACTIONS_UPDATED"}


@task("webhook", name="process_webhook", retries=5, retry_delay=2.0, retry_max_delay=300,
      priority=Priority.HIGH, sensitive=("headers",))
def process_webhook(payload: dict) -> dict:
    """Verify, store and route one provider webhook.

    payload: {"provider": str, "body": raw body text, "headers": {signature headers},
    "received_at": unix time the intake got it}.

    Under redelivery: the event is stored once and routed at most once (see module
    docstring). A bad signature, a stale timestamp or a malformed body is rejected with a
    logged reason and never retried; database or Redis trouble retries.
    """
    try:
        return handle_webhook(payload)
    except WebhookRejected as exc:
        log.error("webhook from %r rejected: %s; not retrying", payload.get("provider"),
                  exc.reason)
        raise CancelExecution(retry=False) from None


def handle_webhook(payload: dict, *, engine: Engine | None = None,
                   settings: HandlerSettings | None = None) -> dict:
    settings = settings or get_handler_settings()
    provider = payload.get("provider")
    body_text = payload.get("body")
    if not isinstance(provider, str) or not isinstance(body_text, str):
        raise WebhookRejected("payload needs provider and body strings")
    body = body_text.encode()
    received_at = float(payload.get("received_at") or time.time())
    signed_ts = verify_signature(provider, body, payload.get("headers") or {},
                                 now=received_at, settings=settings)
    try:
        event = json.loads(body)
    except ValueError:
        raise WebhookRejected("body is not JSON") from None
    if not isinstance(event, dict):
        raise WebhookRejected("body is not a JSON object")
    event_type = str(event.get("event") or event.get("type") or "").strip()
    if not event_type:
        raise WebhookRejected("body has no event type")
    event_id = str(event.get("id") or event.get("eventId")
                   or "sha256:" + hashlib.sha256(body).hexdigest())[:200]
    user_id = event.get("user_id", event.get("userId"))
    try:
        user_id = int(user_id) if user_id is not None else None
    except (TypeError, ValueError):
        raise WebhookRejected(f"user id {user_id!r} is not an integer") from None

    engine = engine or get_engine(settings)
    with engine.begin() as conn:
        conn.execute(dialect_insert(conn, webhook_events).values(
            provider=provider, event_id=event_id, event_type=event_type[:100],
            user_id=user_id, payload=event, status="received",
            signed_at=dt.datetime.fromtimestamp(signed_ts, dt.UTC),
            received_at=dt.datetime.fromtimestamp(received_at, dt.UTC),
        ).on_conflict_do_nothing(index_elements=["provider", "event_id"]))
        row = conn.execute(sa.select(webhook_events.c.id, webhook_events.c.status,
                                     webhook_events.c.routed_to)
                           .where(webhook_events.c.provider == provider,
                                  webhook_events.c.event_id == event_id)).one()
    if row.status == "processed":
        log.info("webhook %s/%s already processed (%s); replay ignored", provider, event_id,
                 row.routed_to)
        return {"event_id": event_id, "duplicate": True, "routed_to": row.routed_to}

    routed_to = _route(provider, event_id, event_type, user_id, event, received_at, settings)
    with engine.begin() as conn:
        conn.execute(webhook_events.update().where(webhook_events.c.id == row.id)
                     .values(status="processed", routed_to=routed_to, processed_at=utcnow()))
    log.info("webhook %s/%s (%s) -> %s", provider, event_id, event_type, routed_to)
    return {"event_id": event_id, "duplicate": False, "routed_to": routed_to}


def _route(provider: str, event_id: str, event_type: str, user_id: int | None, event: dict,
           received_at: float, settings: HandlerSettings) -> str:
    from worker.producer import enqueue

    if user_id is None:
        return "ignored: no user"
    if event_type.upper().replace(".", "_") in REFRESH_EVENTS:
        from app.contracts import SyncType

        window = int(received_at // settings.sync_webhook_window_seconds)
        job = enqueue("sync", "sync_user",
                      {"user_id": user_id, "sync_type": SyncType.WEBHOOK.value},
                      priority=Priority.CRITICAL,
                      idempotency_key=f"webhook-sync:{user_id}:{window}")
        return f"sync:{job.id}" + ("" if job.created else " (deduplicated)")
    job = enqueue("notifications", "create_notification", {
        "user_id": user_id, "kind": f"provider.{event_type.lower()}"[:60],
        "title": str(event.get("title") or event.get("message")
                     or f"Update from {provider}: {event_type}")[:200],
        "body": str(event.get("message") or "")[:2000],
        "data": {"provider": provider, "event_id": event_id},
        "occurred_at": dt.datetime.fromtimestamp(received_at, dt.UTC).isoformat()},
        idempotency_key=f"webhook-notify:{provider}:{event_id}"[:200])
    return f"notification:{job.id}"
