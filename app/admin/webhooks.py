"""Provider webhook intake: POST /api/webhooks/<provider>.

The signature is checked on the raw body before anything is parsed or stored (the verifier,
`worker.webhooks.verify_signature`, also refuses stale timestamps). A good delivery is put on
the `webhook` queue at CRITICAL priority as task `process_webhook` and answered with 202 at
once: the provider's timeout never depends on our handler. A provider that re-sends the same
delivery gets the same job (the idempotency key is a hash of provider and body).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re

from flask import Blueprint, current_app, jsonify, request

from app.admin import audit
from app.admin.errors import ApiError
from app.admin.limits import limit
from worker.producer import JobError, enqueue
from worker.queues import Priority

bp = Blueprint("webhooks", __name__, url_prefix="/api/webhooks")

PROVIDER = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
WEBHOOK_QUEUE, WEBHOOK_TASK = "webhook", "process_webhook"


def _verifier():
    """(verify_signature, UnknownProvider-or-None). Imported late: another issue builds it."""
    try:
        from worker import webhooks
    except ImportError:
        return None, None
    return getattr(webhooks, "verify_signature", None), getattr(webhooks, "UnknownProvider",
                                                                None)


@bp.post("/<provider>")
def receive(provider: str):
    if not PROVIDER.match(provider):
        raise ApiError(404, "unknown webhook provider", field="provider")
    limit("webhook", "webhook_rate_limit", client=f"{provider}:{request.remote_addr}")
    cfg = current_app.config["CLARITY_ADMIN"]
    length = request.content_length
    if length is not None and length > cfg.webhook_max_body_bytes:
        raise ApiError(413, f"webhook body is larger than {cfg.webhook_max_body_bytes} bytes",
                       field="body")
    body = request.get_data(cache=False)
    if len(body) > cfg.webhook_max_body_bytes:
        raise ApiError(413, f"webhook body is larger than {cfg.webhook_max_body_bytes} bytes",
                       field="body")
    verify, unknown_provider = current_app.config.get("CLARITY_WEBHOOK_VERIFIER") or _verifier()
    if verify is None:
        raise ApiError(503, "webhook verification is not configured on this host")
    try:
        verify(provider, body, request.headers)
    except Exception as exc:  # noqa: BLE001 - any refusal by the verifier is a 401
        if unknown_provider is not None and isinstance(exc, unknown_provider):
            raise ApiError(404, "unknown webhook provider", field="provider") from None
        audit.record("webhook", "bad-signature", status=401, who=provider, via="webhook",
                     target={"provider": provider}, detail=str(exc), store=False)
        raise ApiError(401, f"webhook signature rejected: {exc}", field="signature") from None
    try:
        event = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "the webhook body is not JSON", field="body") from None
    received = dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    key = "webhook:" + hashlib.sha256(provider.encode() + b"\0" + body).hexdigest()
    try:
        job = enqueue(WEBHOOK_QUEUE, WEBHOOK_TASK,
                      {"provider": provider, "event": event, "received_at": received},
                      priority=Priority.CRITICAL, idempotency_key=key,
                      settings=current_app.config["CLARITY_SETTINGS"],
                      max_payload_bytes=cfg.webhook_max_body_bytes + 1024)
    except JobError as exc:
        current_app.logger.error("webhook from %s not enqueued: %s", provider, exc)
        raise ApiError(503 if exc.field == "task" else 400, f"webhook not accepted: "
                       f"{exc.reason}", field="body" if exc.field == "payload" else None) \
            from None
    audit.record("webhook", "accepted" if job.created else "duplicate", status=202,
                 who=provider, via="webhook", target={"provider": provider, "jobId": job.id},
                 store=False)
    return jsonify({"accepted": True, "id": job.id, "duplicate": not job.created}), 202
