"""Admin JSON API: GET/POST /api/admin/queue and the OpenAPI document."""

from __future__ import annotations

import json

from flask import Blueprint, current_app, jsonify, request

from app.admin import actions, audit
from app.admin.auth import authorize, bearer_principal, require
from app.admin.errors import ApiError
from app.admin.limits import limit
from app.admin.openapi import spec
from app.admin.params import parse_read

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
def auth_check():
    """204 for a key that may see what nginx guards: an admin or read-only key for worker
    health and metrics, a metrics key for metrics only. nginx's auth_request names the
    guarded path in X-Original-URI."""
    original = request.headers.get("X-Original-URI", "")
    authorize("metrics" if original.split("?", 1)[0].endswith("/metrics") else "read")
    return "", 204


@bp.get("/queue")
@require("read")
def queue_get():
    action, query = parse_read(request.args)
    if action == "overview":
        return current_app.response_class(actions.overview_json(), mimetype="application/json")
    if action == "health":
        body, status = actions.health()
        return jsonify(body), status
    if action == "stats":
        return jsonify(actions.stats(query["queue"]))
    if action == "job":
        return jsonify(actions.get_job(query.get("queue"), query["id"]))
    if action == "series":
        return jsonify(actions.series(query.get("queue"), query.get("window", "hour")))
    state = "failed" if action == "failed-jobs" else query["state"]
    return jsonify(actions.list_jobs(query["queue"], state, query))


@bp.post("/queue")
def queue_post():
    try:
        authorize("admin")
    except ApiError as exc:
        # What it tried, cut to the audit's bounds. Without a valid key the entry is only
        # logged: audit.record stores nothing for an anonymous caller.
        principal = bearer_principal()
        body = _peek_body()
        body = body if isinstance(body, dict) else {}
        if isinstance(body.get(actions.QUEUE_ALIAS), str):
            body.setdefault("queue", body[actions.QUEUE_ALIAS])
        audit.record(body.get("action", "unknown"),
                     "denied" if principal is not None else "unauthorized",
                     status=exc.status, who=principal.name if principal else None,
                     via="api", target=body)
        raise
    return jsonify(actions.audited_mutation(json_body()))


# curl's `-d` without `-H 'Content-Type: application/json'` sends this type; the original
# guide's calls do that. The API takes bearer keys only (no cookie), so accepting it opens
# no cross-site request forgery: a browser form cannot set the Authorization header.
FORM_TYPE = "application/x-www-form-urlencoded"


def _peek_body():
    try:
        return json_body()
    except ApiError:
        return None


def json_body():
    """The request's JSON object. application/json, or curl's default form type when the
    raw body is a JSON object; 415 for anything else, 400 for malformed JSON."""
    if request.is_json:
        body = request.get_json(silent=True)
        if body is None:
            raise ApiError(400, "the body is not valid JSON", field="body")
    elif request.mimetype == FORM_TYPE:
        try:
            body = json.loads(request.get_data(cache=True))
        except (ValueError, UnicodeDecodeError):
            body = None
        if not isinstance(body, dict):
            raise ApiError(415, "send the body as application/json (a form-encoded body is "
                                "accepted only when it is a JSON object, as curl -d sends "
                                "it)", field="Content-Type")
    else:
        raise ApiError(415, "send the body as application/json", field="Content-Type")
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object", field="body")
    return body
