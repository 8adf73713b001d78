"""What a producer needs to know about the Income Clarity jobs, and nothing more.

Task names, sync types and their priorities, the email idempotency key and the webhook job
payload: `QueueService`, the admin's webhook intake and the handlers (`app.jobs`) all take
them from here, so each is defined once. Plain Python only: no SQLAlchemy, no HTTP client,
no handler import behind it.
"""

from __future__ import annotations

import enum
import hashlib
import json
import time

from worker.queues import Priority

# (queue, task) of each handler producers call by name.
SYNC_TASK = ("sync", "sync_user")
EMAIL_TASK = ("email", "send_email")
WEBHOOK_TASK = ("webhook", "process_webhook")


class SyncType(str, enum.Enum):
    MANUAL = "MANUAL"        # the user pressed "refresh"
    SCHEDULED = "SCHEDULED"  # data older than SYNC_MAX_AGE_HOURS
    WEBHOOK = "WEBHOOK"      # the provider says new data is ready
    INITIAL = "INITIAL"      # first sync after linking: longer transaction history

    @property
    def priority(self) -> int:
        return SYNC_PRIORITY[self]


SYNC_PRIORITY = {
    SyncType.MANUAL: Priority.HIGH,
    SyncType.SCHEDULED: Priority.NORMAL,
    SyncType.WEBHOOK: Priority.CRITICAL,
    SyncType.INITIAL: Priority.HIGH,
}


def email_idempotency_key(payload: dict) -> str:
    """The payload's `idempotency_key`, else a hash of what would be sent: the same
    template, recipient and context is the same email."""
    key = payload.get("idempotency_key")
    if key:
        return str(key)[:200]
    canonical = json.dumps({"t": payload.get("template"), "to": payload.get("to"),
                            "c": payload.get("context") or {}}, sort_keys=True, default=str)
    return "content:" + hashlib.sha256(canonical.encode()).hexdigest()


# Webhook signature headers (the scheme is in app.jobs.webhook_signatures).
TIMESTAMP_HEADER = "X-Clarity-Timestamp"
SIGNATURE_HEADER = "X-Clarity-Signature"


def webhook_job_payload(provider: str, body: bytes, headers, received_at: float | None = None
                        ) -> dict:
    """What the intake enqueues for `process_webhook` (JSON-safe): the raw body and the
    signature headers, so that the handler verifies the delivery again."""
    wanted = {TIMESTAMP_HEADER.lower(), SIGNATURE_HEADER.lower()}
    kept = {k: v for k, v in dict(headers).items() if k.lower() in wanted}
    return {"provider": provider, "body": body.decode("utf-8", errors="replace"),
            "headers": kept, "received_at": time.time() if received_at is None else received_at}
