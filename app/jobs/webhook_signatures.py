"""Provider webhook signatures, shared by the admin app's intake endpoint and the webhook
worker.

Scheme (per provider secret, from WEBHOOK_SECRETS):
    X-Clarity-Timestamp: <unix seconds>
    X-Clarity-Signature: v1=<hex HMAC-SHA256(secret, "<timestamp>." + raw body)>[,v1=...]
The timestamp is inside the signed text, so a captured request cannot be replayed with a
fresh timestamp, and one older than WEBHOOK_TOLERANCE_SECONDS is refused. Replays within
the tolerance are caught by the event id (webhook_events is unique per provider and id).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping

from app.contracts import SIGNATURE_HEADER, TIMESTAMP_HEADER
from app.jobs.settings import HandlerSettings, get_handler_settings


class WebhookRejected(Exception):
    """The request is not authentic or not acceptable; `reason` is safe to log."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _header(headers: Mapping, name: str) -> str | None:
    if hasattr(headers, "get"):
        value = headers.get(name)
        if value is not None:
            return value
    lowered = name.lower()
    for key, value in dict(headers).items():
        if key.lower() == lowered:
            return value
    return None


def sign(secret: str, body: bytes, timestamp: int | None = None) -> dict[str, str]:
    """Headers for a signed request (tests, and providers we simulate)."""
    ts = str(int(time.time() if timestamp is None else timestamp))
    digest = hmac.new(secret.encode(), ts.encode() + b"." + body, hashlib.sha256).hexdigest()
    return {TIMESTAMP_HEADER: ts, SIGNATURE_HEADER: f"v1={digest}"}


def verify_signature(provider: str, body: bytes, headers: Mapping, *,
                     now: float | None = None, settings: HandlerSettings | None = None) -> int:
    """Raise WebhookRejected unless `body` carries a valid, fresh signature of `provider`.
    Returns the signed timestamp. `now` defaults to the current time; the worker passes
    the time the intake received the request, so a queue backlog does not make a good
    event stale."""
    settings = settings or get_handler_settings()
    secrets = settings.webhook_secrets_for(provider)
    if not secrets:
        raise WebhookRejected(f"unknown provider {provider!r} (no secret configured)")
    ts_text = _header(headers, TIMESTAMP_HEADER)
    signature = _header(headers, SIGNATURE_HEADER)
    if not ts_text or not signature:
        raise WebhookRejected("missing signature or timestamp header")
    try:
        ts = int(ts_text)
    except ValueError:
        raise WebhookRejected("timestamp header is not an integer") from None
    now = time.time() if now is None else now
    if abs(now - ts) > settings.webhook_tolerance_seconds:
        raise WebhookRejected(f"timestamp outside the tolerance ({int(now - ts)}s off, "
                              f"limit {settings.webhook_tolerance_seconds}s)")
    candidates = [part.strip()[3:] for part in signature.split(",")
                  if part.strip().startswith("v1=")]
    if not candidates:
        raise WebhookRejected("no v1 signature in the signature header")
    signed = ts_text.encode() + b"." + body
    for secret in secrets:
        expected = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
        if any(hmac.compare_digest(expected, c) for c in candidates):
            return ts
    raise WebhookRejected("signature mismatch")
