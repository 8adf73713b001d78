"""Handlers run by real `clarity worker` processes: a notification that fans out an email
crosses two queues, the database and a real SMTP server, and a redelivery changes nothing."""

import os

import sqlalchemy as sa

from app.db import migrate
from app.db.engine import create_db_engine
from app.db.schema import email_log, notifications
from tests.helpers import wait_for
from worker.producer import enqueue


def test_notification_and_its_email_run_through_real_workers(env, workers, tmp_path,
                                                             smtp_server):
    url = f"sqlite:///{tmp_path / 'app.db'}"
    engine = create_db_engine(url)
    migrate.upgrade(engine=engine)
    smtp = {k: os.environ[k] for k in ("SMTP_HOST", "SMTP_PORT", "SMTP_SECURITY", "SMTP_FROM")}
    workers(queues=("notifications", "email"), concurrency=2, database_url=url, **smtp)
    payload = {"user_id": 7, "kind": "sync_failed", "title": "Your bank sync failed",
               "occurred_at": "2026-11-28T02:00:00+00:00", "email": {"to": "ann@example.com"}}
    enqueue("notifications", "create_notification", payload)
    enqueue("notifications", "create_notification", payload)  # as a redelivery would

    def settled():
        with engine.connect() as conn:
            n = conn.execute(sa.select(sa.func.count()).select_from(notifications)).scalar()
            sent = conn.execute(sa.select(sa.func.count()).select_from(email_log)
                                .where(email_log.c.status == "sent")).scalar()
        return n == 1 and sent == 1 and len(smtp_server.messages) == 1

    wait_for(settled, timeout=30, message="one notification and one email")
    assert smtp_server.messages[0].rcpt_tos == ["ann@example.com"]
