"""User notifications, deduplicated per (user, kind, window), with optional email.

Redelivery: the notification's dedupe key is unique, so a redelivered job (or a second
event of the same kind in the same window) creates nothing new. The email fan-out is
enqueued with an idempotency key derived from the notification, and the `emailed` flag
is only set after the enqueue succeeded: a crash in between re-enqueues, which the
queue's and email_log's keys turn into a no-op.
"""

from __future__ import annotations

import datetime as dt
import logging

import sqlalchemy as sa
from huey.exceptions import CancelExecution
from sqlalchemy.engine import Engine

from app.db.engine import dialect_insert, get_engine
from app.db.schema import notifications, utcnow
from app.jobs.settings import get_handler_settings
from worker.queues import Priority
from worker.registry import task

log = logging.getLogger("clarity.tasks.notifications")


def dedupe_key(user_id: int, kind: str, at: dt.datetime, window_seconds: int) -> str:
    bucket = int(at.timestamp() // window_seconds)
    return f"{user_id}:{kind}:{window_seconds}:{bucket}"[:200]


@task("notifications", name="create_notification", retries=5, retry_delay=2.0,
      retry_max_delay=300, priority=Priority.NORMAL)
def create_notification(payload: dict) -> dict:
    """Create a notification for a user.

    payload: {"user_id": int, "kind": str, "title": str, "body": str?, "data": {}?,
    "occurred_at": ISO time? (the window is computed from it, so a redelivery later
    falls in the same window), "window_seconds": int?, "email": {"to": address,
    "name": str?}?}.

    Under redelivery: at most one notification per (user, kind, window) and at most one
    email per notification.
    """
    try:
        user_id = int(payload["user_id"])
        kind = str(payload["kind"])[:60]
        title = str(payload.get("title") or kind)[:200]
        occurred = payload.get("occurred_at")
        at = dt.datetime.fromisoformat(occurred) if occurred else utcnow()
        if at.tzinfo is None:
            at = at.replace(tzinfo=dt.UTC)
        window = int(payload.get("window_seconds")
                     or get_handler_settings().notification_window_seconds)
        if window < 1:
            raise ValueError("window_seconds must be >= 1")
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        log.error("create_notification: bad payload %r (%s); not retrying", payload, exc)
        raise CancelExecution(retry=False) from None
    return notify(user_id, kind, title, payload.get("body"), payload.get("data"), at, window,
                  payload.get("email"))


def notify(user_id: int, kind: str, title: str, body: str | None, data: dict | None,
           at: dt.datetime, window: int, email: dict | None = None,
           engine: Engine | None = None) -> dict:
    engine = engine or get_engine()
    key = dedupe_key(user_id, kind, at, window)
    with engine.begin() as conn:
        created = conn.execute(dialect_insert(conn, notifications).values(
            user_id=user_id, kind=kind, dedupe_key=key, title=title, body=body, data=data,
            created_at=utcnow()).on_conflict_do_nothing(index_elements=["dedupe_key"])
            .returning(notifications.c.id)).first() is not None
        row = conn.execute(sa.select(notifications.c.id, notifications.c.emailed)
                           .where(notifications.c.dedupe_key == key)).one()
    emailed = row.emailed
    if email and email.get("to") and not emailed:
        from app.jobs.email import enqueue_email

        enqueue_email("notification", email["to"],
                      {"name": email.get("name"), "title": title, "body": body or ""},
                      idempotency_key=f"notification:{row.id}")
        with engine.begin() as conn:
            conn.execute(notifications.update().where(notifications.c.id == row.id)
                         .values(emailed=True))
        emailed = True
    if created:
        log.info("notification %s for user %s: %s", kind, user_id, title)
    return {"notification_id": row.id, "created": created, "emailed": emailed}
