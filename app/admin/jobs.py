"""Enqueue API for producers that are not Python: POST /api/jobs.

Body: {"queue", "task", "payload", "priority"?, "delay"? | "scheduledAt"?}; header
`Idempotency-Key` (optional): the same key returns the first job's id with 200 instead of
201. Every field is checked before Redis is touched; an error names the field.
"""

from __future__ import annotations

import datetime as dt
import re
from urllib.parse import urlencode

from flask import Blueprint, current_app, jsonify, request

from app.admin import audit
from app.admin.api import json_body
from app.admin.auth import require
from app.admin.errors import ApiError
from app.admin.limits import limit
from app.admin.params import check, enqueue_schema
from worker.producer import JobError, enqueue

bp = Blueprint("jobs", __name__, url_prefix="/api")

# worker.producer names its arguments in Python style; the API speaks camelCase/headers.
FIELD_NAMES = {"scheduled_at": "scheduledAt", "idempotency_key": "Idempotency-Key"}
# RFC 3339 (what the schema's `date-time` means), checked before Python parses it.
RFC3339 = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?"
                     r"([Zz]|[+-][0-9]{2}:[0-9]{2})")


@bp.before_request
def _rate_limit():
    limit("enqueue", "enqueue_rate_limit")


def _check(body: dict) -> None:
    check(enqueue_schema(), body, "field")
    scheduled = body.get("scheduledAt")
    if scheduled is not None:
        try:
            if not RFC3339.fullmatch(scheduled):
                raise ValueError
            dt.datetime.fromisoformat(scheduled.upper())
        except ValueError:
            raise ApiError(400, "scheduledAt must be an RFC 3339 time with an offset, e.g. "
                                "2026-12-01T09:00:00Z", field="scheduledAt") from None


@bp.post("/jobs")
@require("enqueue")
def create_job():
    body = json_body()
    _check(body)
    key = request.headers.get("Idempotency-Key")
    if key is not None and (not key or len(key) > 200 or not key.isprintable()):
        raise ApiError(400, "Idempotency-Key must be 1..200 printable characters",
                       field="Idempotency-Key")
    cfg = current_app.config["CLARITY_ADMIN"]
    priority = body.get("priority")
    if isinstance(priority, float):  # JSON Schema counts 5.0 as an integer; so do we
        priority = int(priority)
    try:
        job = enqueue(body["queue"], body["task"], body["payload"],
                      priority=priority, delay=body.get("delay"),
                      scheduled_at=body["scheduledAt"].upper() if body.get("scheduledAt")
                      else None, idempotency_key=key,
                      settings=current_app.config["CLARITY_SETTINGS"],
                      max_payload_bytes=cfg.enqueue_max_payload_bytes)
    except JobError as exc:
        status = 413 if exc.field == "payload" and "limit is" in exc.reason else 400
        if exc.field == "scheduled_at":  # well-formed (checked above) but outside the window
            status = 422
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
