"""Provider webhook intake: POST /api/webhooks/<provider>.

The signature is checked on the raw body before anything is parsed or stored (the verifier,
`app.jobs.webhook_signatures.verify_signature`, also refuses stale timestamps). A good delivery is put on
the `webhook` queue at CRITICAL priority as task `process_webhook` and answered with 202 at
once: the provider's timeout never depends on our handler. The job carries what the handler
needs to verify again (app.contracts.webhook_job_payload: raw body, signature
headers, time received). A provider that re-sends the same delivery gets the same job (the
idempotency key is a hash of provider and body).
"""

from __future__ import annotations

import hashlib
import json
import re
import time

from flask import Blueprint, current_app, jsonify, request

from app.admin import audit
from app.admin.errors import ApiError
from app.admin.limits import limit
from app.contracts import WEBHOOK_TASK, webhook_job_payload
from app.jobs import webhook_signatures
from worker.producer import JobError, enqueue
from worker.queues import Priority

bp = Blueprint("webhooks", __name__, url_prefix="/api/webhooks")

PROVIDER = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
WEBHOOK_QUEUE, WEBHOOK_TASK_NAME = WEBHOOK_TASK


@bp.post("/<provider>")
def receive(provider: str):
    if not PROVIDER.match(provider):
        raise ApiError(404, "unknown webhook provider", field="provider")
    limit("webhook", "webhook_rate_limit", client=f"{provider}:{request.remote_addr}")
    cfg = current_app.config["CLARITY_ADMIN"]
    received_at = time.time()
    length = request.content_length
    if length is not None and length > cfg.webhook_max_body_bytes:
        raise ApiError(413, f"webhook body is larger than {cfg.webhook_max_body_bytes} bytes",
                       field="body")
    body = request.get_data(cache=False)
    if len(body) > cfg.webhook_max_body_bytes:
        raise ApiError(413, f"webhook body is larger than {cfg.webhook_max_body_bytes} bytes",
                       field="body")
    # (verify, the exception it refuses with, the one for an unknown provider or None). The
    # real verifier answers an unknown provider like a bad signature (401), so that probing
    # does not list the providers we take; tests inject their own.
    verify, rejected, unknown_provider = current_app.config.get(
        "CLARITY_WEBHOOK_VERIFIER",
        (webhook_signatures.verify_signature, webhook_signatures.WebhookRejected, None))
    try:
        verify(provider, body, request.headers)
    except rejected as exc:
        if unknown_provider is not None and isinstance(exc, unknown_provider):
            raise ApiError(404, "unknown webhook provider", field="provider") from None
        audit.record("webhook", "bad-signature", status=401, who=provider, via="webhook",
                     target={"provider": provider}, detail=str(exc), store=False)
        raise ApiError(401, f"webhook signature rejected: {exc}", field="signature") from None
    try:
        json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "the webhook body is not JSON", field="body") from None
    key = "webhook:" + hashlib.sha256(provider.encode() + b"\0" + body).hexdigest()
    try:
        job = enqueue(WEBHOOK_QUEUE, WEBHOOK_TASK_NAME,
                      webhook_job_payload(provider, body, request.headers, received_at),
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
