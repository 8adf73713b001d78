"""Secrets, an SMTP capture handler and a look at waiting jobs, for the handler tests."""

from __future__ import annotations

from worker import connections, hueys

WEBHOOK_SECRET = "whsec-test-0123456789abcdef"
SIGNING_SECRET = "handler-test-signing-secret-0123456789"


class CapturingHandler:
    """aiosmtpd handler: keeps accepted messages; `reply` set answers DATA with it."""

    def __init__(self):
        self.messages = []
        self.reply: str | None = None
        self.rcpt_reply: str | None = None

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if self.rcpt_reply:
            return self.rcpt_reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        if self.reply:
            return self.reply
        self.messages.append(envelope)
        return "250 Message accepted for delivery"


def waiting_jobs(queue: str) -> list[tuple[dict, int]]:
    """(payload, priority) of every waiting job of `queue`, in dequeue order."""
    from worker.queues import QueueKeys
    from worker.settings import get_settings

    settings = get_settings()
    conn = connections.redis_client(settings)
    keys = QueueKeys(settings.redis_key_prefix, queue)
    huey = hueys.get_huey(queue, settings)
    out = []
    for job_id in conn.zrange(keys.waiting, 0, -1):
        msg, prio = conn.hmget(keys.job(job_id.decode()), "msg", "prio")
        out.append((huey.deserialize_task(msg, job_id.decode()).args[0], int(prio)))
    return out
