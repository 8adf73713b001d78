"""Enqueue API for producers that are not Python: POST /api/jobs.

Body: {"queue", "task", "payload", "priority"?, "delay"? | "scheduledAt"?}; header
`Idempotency-Key` (optional): the same key returns the first job's id with 200 instead of
201. Every field is checked before Redis is touched; an error names the field.
"""

from __future__ import annotations

import math
from urllib.parse import urlencode

from flask import Blueprint, current_app, jsonify, request

from app.admin import audit
from app.admin.api import json_body
from app.admin.auth import require
from app.admin.errors import ApiError
from app.admin.limits import limit
from worker.producer import JobError, enqueue

bp = Blueprint("jobs", __name__, url_prefix="/api")

FIELDS = {"queue", "task", "payload", "priority", "delay", "scheduledAt"}
# worker.producer names its arguments in Python style; the API speaks camelCase/headers.
FIELD_NAMES = {"scheduled_at": "scheduledAt", "idempotency_key": "Idempotency-Key"}


@bp.before_request
def _rate_limit():
    limit("enqueue", "enqueue_rate_limit")


def _check_types(body: dict) -> None:
    for name in body:
        if name not in FIELDS:
            raise ApiError(400, f"unknown field {name!r}; allowed: {', '.join(sorted(FIELDS))}",
                           field=name)
    for name in ("queue", "task"):
        if name not in body or body[name] in (None, ""):
            raise ApiError(400, f"{name} is required", field=name)
        if not isinstance(body[name], str):
            raise ApiError(400, f"{name} must be a string", field=name)
    if "payload" not in body:
        raise ApiError(400, "payload is required (use {} for none)", field="payload")
    if not isinstance(body["payload"], dict):
        raise ApiError(400, "payload must be a JSON object", field="payload")
    priority = body.get("priority")
    if priority is not None and (isinstance(priority, bool)
                                 or not isinstance(priority, str | int)):
        raise ApiError(400, "priority must be a name (low, normal, high, critical) or an "
                            "integer 1..10", field="priority")
    delay = body.get("delay")
    if delay is not None and (isinstance(delay, bool) or not isinstance(delay, int | float)
                              or not math.isfinite(delay)):
        raise ApiError(400, "delay must be a number of seconds", field="delay")
    scheduled = body.get("scheduledAt")
    if scheduled is not None and not isinstance(scheduled, str):
        raise ApiError(400, "scheduledAt must be an ISO 8601 string with a UTC offset",
                       field="scheduledAt")
    if delay is not None and scheduled is not None:
        raise ApiError(400, "give either delay or scheduledAt, not both", field="delay")
    if scheduled is not None and not scheduled.strip():
        raise ApiError(400, "scheduledAt must not be empty", field="scheduledAt")


@bp.post("/jobs")
@require("enqueue")
def create_job():
    body = json_body()
    _check_types(body)
    key = request.headers.get("Idempotency-Key")
    if key is not None and (not key or len(key) > 200 or not key.isprintable()):
        raise ApiError(400, "Idempotency-Key must be 1..200 printable characters",
                       field="Idempotency-Key")
    cfg = current_app.config["CLARITY_ADMIN"]
    try:
        job = enqueue(body["queue"], body["task"], body["payload"],
                      priority=body.get("priority"), delay=body.get("delay"),
                      scheduled_at=body.get("scheduledAt"), idempotency_key=key,
                      settings=current_app.config["CLARITY_SETTINGS"],
                      max_payload_bytes=cfg.enqueue_max_payload_bytes)
    except JobError as exc:
        status = 413 if exc.field == "payload" and "limit is" in exc.reason else 400
        raise ApiError(status, exc.reason, field=FIELD_NAMES.get(exc.field, exc.field)) from None
    delayed = bool(body.get("delay")) or body.get("scheduledAt") is not None
    result = {"id": job.id, "queue": job.queue, "task": job.task, "created": job.created,
              "state": "delayed" if delayed else "waiting"}
    if not job.created:
        result["state"] = "duplicate"
    audit.record("enqueue", "created" if job.created else "duplicate",
                 status=201 if job.created else 200,
                 target={"queue": job.queue, "task": job.task, "jobId": job.id}, store=False)
    response = jsonify(result)
    response.status_code = 201 if job.created else 200
    response.headers["Location"] = "/api/admin/queue?" + urlencode(
        {"action": "job", "queue": job.queue, "id": job.id})
    return response
