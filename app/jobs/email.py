"""Transactional email: render a Jinja2 template (text + HTML) and send it over SMTP.

Redelivery: `email_log.idempotency_key` is unique. A job claims its row before talking to
SMTP and marks it sent right after the server's 250; a redelivered job that finds the row
sent (or failed for good) sends nothing. The one window left is a crash between the
server's 250 and our commit (milliseconds): the claim then expires after
CLAIM_TIMEOUT and the email is sent again with the same Message-ID, so clients show one.
"""

from __future__ import annotations

import datetime as dt
import logging

import sqlalchemy as sa
from huey.exceptions import CancelExecution
from sqlalchemy.engine import Engine

from app.contracts import email_idempotency_key
from app.db.engine import dialect_insert, get_engine
from app.db.schema import email_log, utcnow
from app.jobs.mailer import (
    PermanentMailError,
    TransientMailError,
    build_message,
    get_mailer,
    message_id_for,
    render,
)
from app.jobs.settings import get_handler_settings
from worker.queues import Priority
from worker.registry import task

log = logging.getLogger("clarity.tasks.email")

# A claim older than this belongs to a delivery that died; the job's lease (30 s by
# default) and SMTP timeouts are far shorter.
CLAIM_TIMEOUT = dt.timedelta(minutes=10)


def enqueue_email(template: str, to: str, context: dict | None = None, *,
                  idempotency_key: str | None = None, priority=None):
    """Enqueue `send_email`; the same idempotency key is used for the queue's dedupe and
    for email_log. Returns worker.producer.EnqueuedJob."""
    from worker.producer import enqueue

    payload = {"template": template, "to": to, "context": context or {}}
    key = idempotency_key or email_idempotency_key(payload)
    payload["idempotency_key"] = key
    return enqueue("email", "send_email", payload, priority=priority,
                   idempotency_key=f"email:{key}")


@task("email", name="send_email", retries=8, retry_delay=30.0, retry_max_delay=3600,
      priority=Priority.NORMAL, sensitive=("reset_url",))
def send_email(payload: dict) -> dict:
    """Send one transactional email.

    payload: {"template": "welcome" | "password_reset" | "sync_failed" |
    "weekly_income_summary" | "notification", "to": address, "context": {...},
    "idempotency_key": optional, "headers": optional}.

    Under redelivery: sends at most once per idempotency key (see the module docstring
    for the crash window). SMTP 4xx and connection errors retry with backoff; SMTP 5xx,
    an unknown template or a bad payload fail at once, recorded in email_log.
    """
    template, to = payload.get("template"), payload.get("to")
    context = payload.get("context") or {}
    if not isinstance(template, str) or not isinstance(to, str) or "@" not in to \
            or not isinstance(context, dict):
        log.error("send_email: bad payload (template=%r, to=%r); not retrying", template, to)
        raise CancelExecution(retry=False)
    try:
        return deliver(template, to, context, email_idempotency_key(payload),
                       headers=payload.get("headers"))
    except PermanentMailError as exc:
        log.error("email %s to %s refused for good: %s", template, to, exc)
        raise CancelExecution(retry=False) from None
    except ValueError as exc:  # unknown template, template error
        log.error("email %s to %s cannot be rendered: %s; not retrying", template, to, exc)
        raise CancelExecution(retry=False) from None


def deliver(template: str, to: str, context: dict, key: str, *, headers: dict | None = None,
            engine: Engine | None = None) -> dict:
    settings = get_handler_settings()
    engine = engine or get_engine(settings)
    now = utcnow()
    with engine.begin() as conn:
        conn.execute(dialect_insert(conn, email_log).values(
            idempotency_key=key, template=template, to_address=to, status="pending",
            created_at=now).on_conflict_do_nothing(index_elements=["idempotency_key"]))
        # Claim: only one delivery at a time may talk to SMTP for this key.
        claimed = conn.execute(
            email_log.update()
            .where(email_log.c.idempotency_key == key,
                   sa.or_(email_log.c.status.in_(("pending", "retry")),
                          sa.and_(email_log.c.status == "sending",
                                  email_log.c.claimed_at < now - CLAIM_TIMEOUT)))
            .values(status="sending", claimed_at=now, attempts=email_log.c.attempts + 1)
        ).rowcount
        row = conn.execute(sa.select(email_log.c.id, email_log.c.status,
                                     email_log.c.message_id)
                           .where(email_log.c.idempotency_key == key)).one()
    if not claimed:
        log.info("email %s (%s) already %s; not sending again", key, template, row.status)
        return {"status": row.status, "duplicate": True, "email_log_id": row.id}

    try:
        rendered = render(template, context, settings)
    except Exception as exc:
        _finish(engine, row.id, "failed", error=f"render: {type(exc).__name__}: {exc}")
        raise ValueError(f"template {template}: {exc}") from exc
    message_id = message_id_for(key, settings.smtp_from)
    msg = build_message(to, rendered, settings.smtp_from, message_id, headers)
    try:
        get_mailer().send(msg)
    except PermanentMailError as exc:
        _finish(engine, row.id, "failed", error=str(exc), subject=rendered.subject)
        raise
    except TransientMailError as exc:
        _finish(engine, row.id, "retry", error=str(exc), subject=rendered.subject)
        log.warning("email %s to %s deferred: %s", template, to, exc)
        raise
    _finish(engine, row.id, "sent", subject=rendered.subject, message_id=message_id)
    log.info("sent email %s to %s (%s)", template, to, message_id)
    return {"status": "sent", "duplicate": False, "email_log_id": row.id,
            "message_id": message_id}


def _finish(engine: Engine, row_id: int, status: str, *, error: str | None = None,
            subject: str | None = None, message_id: str | None = None) -> None:
    values = {"status": status, "error": error}
    if subject is not None:
        values["subject"] = subject
    if status == "sent":
        values.update(sent_at=utcnow(), message_id=message_id)
    with engine.begin() as conn:
        conn.execute(email_log.update().where(email_log.c.id == row_id).values(**values))
