"""Admin JSON API: GET/POST /api/admin/queue and the OpenAPI document."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify, request

from app.admin import actions, audit
from app.admin.auth import authorize, bearer_principal, require
from app.admin.errors import ApiError
from app.admin.limits import limit
from app.admin.openapi import spec

bp = Blueprint("api", __name__, url_prefix="/api/admin")


@bp.before_request
def _rate_limit():
    # openapi: public documentation; auth: nginx's auth_request subrequest, limited by
    # nginx's limit_req in front of the location that asked.
    if request.endpoint not in ("api.openapi", "api.auth_check"):
        limit("admin-api", "admin_rate_limit")


@bp.get("/openapi.json")
def openapi():
    return jsonify(spec(request.host_url.rstrip("/")))


@bp.get("/auth")
@require("read")
def auth_check():
    """204 for a valid admin or read-only key: nginx's auth_request for worker health."""
    return "", 204


@bp.get("/queue")
@require("read")
def queue_get():
    args = request.args
    action = args.get("action") or "overview"
    if action not in actions.READ_ACTIONS:
        raise ApiError(400, f"unknown action {action!r}: expected one of "
                            f"{', '.join(actions.READ_ACTIONS)} (GET) or POST a mutation",
                       field="action")
    if action == "overview":
        return current_app.response_class(actions.overview_json(), mimetype="application/json")
    if action == "health":
        body, status = actions.health()
        return jsonify(body), status
    if action == "stats":
        return jsonify(actions.stats(args.get("queue")))
    if action == "job":
        return jsonify(actions.get_job(args.get("queue"), args.get("id")))
    limit_, offset = actions.page_args(args)
    state = "failed" if action == "failed-jobs" else args.get("state")
    return jsonify(actions.list_jobs(args.get("queue"), state, limit_, offset))


@bp.post("/queue")
def queue_post():
    body = request.get_json(silent=True) if request.is_json else None
    try:
        authorize("admin")
    except ApiError as exc:
        principal = bearer_principal()
        audit.record(str(body.get("action"))[:40] if isinstance(body, dict) else "unknown",
                     "denied" if exc.status == 403 else "unauthorized", status=exc.status,
                     who=principal.name if principal else "anonymous", via="api",
                     target={k: body[k] for k in ("queue", "jobId", "jobState")
                             if isinstance(body, dict) and isinstance(body.get(k), str)})
        raise
    return jsonify(actions.audited_mutation(json_body()))


def json_body():
    """The request's JSON object; 415 for another media type, 400 for malformed JSON."""
    if not request.is_json:
        raise ApiError(415, "send the body as application/json", field="Content-Type")
    body = request.get_json(silent=True)
    if body is None:
        raise ApiError(400, "the body is not valid JSON", field="body")
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object", field="body")
    return body
