"""Email handler against a real SMTP server (aiosmtpd), on SQLite and PostgreSQL."""

from __future__ import annotations

import email

import pytest
import sqlalchemy as sa
from huey.exceptions import CancelExecution

from app.db.schema import email_log
from app.jobs.email import send_email
from app.jobs.mailer import TransientMailError, get_mailer, render

WELCOME = {"template": "welcome", "to": "ada@example.com", "context": {"name": "Ada"},
           "idempotency_key": "welcome:42"}


def log_rows(engine):
    with engine.connect() as conn:
        return conn.execute(sa.select(email_log)).all()


def test_welcome_email_is_sent_with_text_and_html_parts(db, smtp_server):
    result = send_email(WELCOME)
    assert result["status"] == "sent"
    assert len(smtp_server.messages) == 1
    envelope = smtp_server.messages[0]
    assert envelope.rcpt_tos == ["ada@example.com"]
    msg = email.message_from_bytes(envelope.content)
    assert msg["Subject"] == "Welcome to Income Clarity, Ada"
    types = [part.get_content_type() for part in msg.walk()]
    assert "text/plain" in types and "text/html" in types
    row = log_rows(db)[0]
    assert row.status == "sent" and row.message_id == msg["Message-ID"]


def test_same_email_job_delivered_twice_sends_one_message(db, smtp_server):
    send_email(WELCOME)
    again = send_email(WELCOME)
    assert again["duplicate"] is True
    assert len(smtp_server.messages) == 1
    assert len(log_rows(db)) == 1


def test_without_a_key_the_same_content_is_the_same_email(db, smtp_server):
    payload = {k: v for k, v in WELCOME.items() if k != "idempotency_key"}
    send_email(payload)
    send_email(payload)
    assert len(smtp_server.messages) == 1


def test_connection_is_reused_between_messages(db, smtp_server):
    for i in range(3):
        send_email({**WELCOME, "idempotency_key": f"welcome:{i}"})
    assert len(smtp_server.messages) == 3
    assert get_mailer().connections_opened == 1


def test_smtp_4xx_is_retried_later_then_sent(db, smtp_server):
    smtp_server.reply = "451 4.3.0 Try again later"
    with pytest.raises(TransientMailError):
        send_email(WELCOME)
    assert log_rows(db)[0].status == "retry"
    smtp_server.reply = None
    assert send_email(WELCOME)["status"] == "sent"
    assert len(smtp_server.messages) == 1
    assert log_rows(db)[0].attempts == 2


def test_smtp_5xx_fails_with_the_servers_reply(db, smtp_server):
    smtp_server.rcpt_reply = "550 5.1.1 No such user here"
    with pytest.raises(CancelExecution):
        send_email(WELCOME)
    row = log_rows(db)[0]
    assert row.status == "failed" and "550" in row.error and "No such user" in row.error
    # a redelivery of the failed job does not try again
    assert send_email(WELCOME)["duplicate"] is True
    assert smtp_server.messages == []


def test_unreachable_server_is_transient(db, handler_env):
    handler_env(smtp_host="127.0.0.1", smtp_port=1, smtp_security="none")
    with pytest.raises(TransientMailError):
        send_email(WELCOME)


def test_unknown_template_fails_at_once(db, smtp_server):
    with pytest.raises(CancelExecution):
        send_email({**WELCOME, "template": "nope"})


@pytest.mark.parametrize("template,context", [
    ("welcome", {}),
    ("password_reset", {"reset_url": "https://x/reset/abc"}),
    ("sync_failed", {"institution": "Test Bank", "reason": "credentials changed"}),
    ("weekly_income_summary", {"week_start": "2026-11-23", "week_income": 12.5,
                               "annual_income": 1200, "monthly_income": 100,
                               "payments": [{"date": "2026-11-24", "symbol": "O",
                                             "amount": 12.5}]}),
    ("notification", {"title": "Hello", "body": "World"}),
])
def test_every_template_renders_text_and_html(handler_env, template, context):
    rendered = render(template, context)
    assert rendered.subject and rendered.text.strip() and "<html" in rendered.html


def test_html_escapes_user_content(handler_env):
    rendered = render("welcome", {"name": "<script>x</script>"})
    assert "<script>" not in rendered.html and "&lt;script&gt;" in rendered.html
