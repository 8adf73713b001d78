"""The operators' dashboard: server-rendered pages, refreshed in place by a little JS.

Login takes an admin or read-only key and keeps a signed session cookie (HttpOnly,
SameSite=Lax, Secure whenever the request came over TLS). Every form carries a CSRF token;
fetch() sends it as X-CSRF-Token. The panels are Jinja partials: the page renders them once
and /dashboard/panels re-renders them for the auto-refresh, so there is one template per
panel and no client-side rendering of untrusted text (payloads and tracebacks are escaped by
Jinja).
"""

from __future__ import annotations

import json

import redis
from flask import (
    Blueprint,
    current_app,
    jsonify,
    redirect,
    render_template,
    request,
    session,
    url_for,
)

from app.admin import actions, audit
from app.admin.auth import check_csrf, csrf_token, login_session, session_principal
from app.admin.charts import queue_charts
from app.admin.errors import ApiError
from app.admin.limits import limit
from app.admin.params import parse_read
from app.admin.redact import present

bp = Blueprint("dashboard", __name__, template_folder="templates", static_folder="static",
               static_url_path="/static/admin")

PANEL_ROWS = 10


def migration_panel(status: dict | None) -> dict | None:
    """The migration panel's figures, or a clear state instead of an exception's text."""
    if status is None:
        return None
    legacy = status.get("legacy")
    if isinstance(legacy, dict) and "error" in legacy:
        return {"state": describe_database_problem(str(legacy["error"])),
                "mode": status.get("mode"), "routed": status.get("routed")}
    return status


def describe_database_problem(text: str) -> str:
    lowered = text.lower()
    if "no such table" in lowered or ("relation" in lowered and "does not exist" in lowered) \
            or "undefinedtable" in lowered:
        return "database not migrated: run `clarity db upgrade`"
    if "unable to open database" in lowered or "connection" in lowered or \
            "could not connect" in lowered:
        return "database unreachable: check DATABASE_URL (`clarity db current` tells more)"
    return "database unavailable: see the admin's log, and `clarity db current`"


@bp.before_request
def _rate_limit():
    if request.endpoint != "dashboard.static":
        limit("dashboard", "dashboard_rate_limit", dashboard=True)


def _wants_json() -> bool:
    return request.headers.get("X-Requested-With") == "fetch" or \
        request.accept_mimetypes.best == "application/json"


def _shown(queue: str, state: str, principal) -> list[dict]:
    page = actions.manager().list_jobs(queue, state, PANEL_ROWS, payloads=True)
    return [present(j, full_payload=principal.can("payload"), keep_payload=False)
            for j in page["jobs"]]


REDIS_DOWN = ("the queue store (Redis) is unavailable: the queues cannot be shown or changed "
              "until it answers. Run `clarity doctor` on this host; see "
              "docs/troubleshooting.md, Connection issues")


def _context(principal) -> dict:
    """Everything the panels show; a Redis outage is one clear state, not an error page."""
    try:
        return _panels(principal)
    except (ApiError, redis.RedisError) as exc:
        if isinstance(exc, ApiError) and exc.status != 503:
            raise
        current_app.logger.warning("dashboard: Redis unavailable (%s)", exc)
        return {**_base(principal), "problem": REDIS_DOWN, "overview": None, "failed": [],
                "delayed": [], "audit": [], "charts": [], "migration": None}


def _panels(principal) -> dict:
    overview = actions.overview()
    failed, delayed = [], []
    for queue in overview["queues"]:
        if queue["failed"]:
            failed += _shown(queue["name"], "failed", principal)
        if queue["delayed"]:
            delayed += _shown(queue["name"], "delayed", principal)
    failed.sort(key=lambda j: j.get("lastFailedAt") or "", reverse=True)
    delayed.sort(key=lambda j: j.get("runAt") or "")
    return {
        **_base(principal),
        "overview": overview,
        "failed": failed[:PANEL_ROWS * 2],
        "delayed": delayed[:PANEL_ROWS * 2],
        "audit": audit.recent(15),
        "charts": [(q["queue"], queue_charts(q)) for q in actions.series(None)["queues"]],
        "migration": migration_panel(overview.get("migration")),
    }


@bp.get("/")
def index():
    principal, away = _page_principal()
    if away:
        return away
    return render_template("admin/dashboard.html", **_context(principal))


def _page_principal():
    principal = session_principal()
    if principal is None:
        target = request.full_path if request.path != "/" else None
        return None, redirect(url_for("dashboard.login", next=target))
    return principal, None


def _base(principal) -> dict:
    return {"principal": principal, "can_mutate": principal.can("admin"),
            "csrf": csrf_token(),
            "refresh_seconds": current_app.config["CLARITY_ADMIN"].dashboard_refresh_seconds}


def _args(**wanted) -> dict:
    """Query arguments of a page, validated like the API's (a bad one is a 400)."""
    from werkzeug.datastructures import MultiDict

    query = MultiDict({k: v for k, v in request.args.items() if v != "" and k in wanted})
    return parse_read(MultiDict({"action": wanted.pop("_action"), **query}))[1]


@bp.get("/charts")
def charts_page():
    principal, away = _page_principal()
    if away:
        return away
    query = _args(_action="series", queue=1, window=1)
    window = query.get("window", "hour")
    data = actions.series(query.get("queue"), window)
    return render_template("admin/charts.html", **_base(principal), window=window,
                           charts=[(q["queue"], queue_charts(q)) for q in data["queues"]])


@bp.get("/job")
def job_page():
    principal, away = _page_principal()
    if away:
        return away
    job_id = request.args.get("id", "").strip()
    queue = request.args.get("queue") or None
    context = _base(principal)
    if not job_id:
        return render_template("admin/job.html", **context, job=None, error=None, query="")
    query = _args(_action="job", id=1, queue=1)
    try:
        job = actions.get_job(query.get("queue", queue), query["id"])
    except ApiError as exc:
        if exc.status != 404:
            raise
        return render_template("admin/job.html", **context, job=None, error=exc.message,
                               query=job_id), 404
    return render_template("admin/job.html", **context, job=job, error=None, query=job_id,
                           payload_json=json.dumps(job.get("payload"), indent=2,
                                                   ensure_ascii=False, default=str))


@bp.get("/failed")
def failed_page():
    principal, away = _page_principal()
    if away:
        return away
    query = _args(_action="failed-jobs", queue=1, task=1, errorType=1, cursor=1, limit=1)
    page = actions.list_jobs(query["queue"], "failed", query)
    facets = actions.manager().failed_facets(query["queue"])
    return render_template("admin/failed.html", **_base(principal), queue=query["queue"],
                           page=page, facets=facets, task=query.get("task", ""),
                           error_type=query.get("errorType", ""),
                           queues=actions.QUEUE_NAMES)


@bp.get("/dashboard/panels")
def panels():
    principal = session_principal()
    if principal is None:
        raise ApiError(401, "not logged in", code="login_required")
    return render_template("admin/panels.html", **_context(principal))


def _next_url() -> str:
    """Where to go after logging in: a page of this app only."""
    target = request.values.get("next", "")
    return target if target.startswith("/") and not target.startswith("//") else \
        url_for("dashboard.index")


@bp.get("/login")
def login():
    if session_principal() is not None:
        return redirect(_next_url())
    return render_template("admin/login.html", csrf=csrf_token(), error=None)


@bp.post("/login")
def login_post():
    check_csrf()
    principal = login_session(request.form.get("key", "").strip())
    if principal is None:
        current_app.logger.warning("dashboard login refused from %s", request.remote_addr)
        return render_template("admin/login.html", csrf=csrf_token(),
                               error="That key is not an admin or read-only key."), 401
    audit.record("login", "ok", status=200, who=principal.name, via="dashboard")
    return redirect(_next_url())


@bp.post("/logout")
def logout():
    check_csrf()
    principal = session_principal()
    if principal is not None:
        audit.record("logout", "ok", status=200, who=principal.name, via="dashboard")
    session.clear()
    return redirect(url_for("dashboard.login"))


@bp.post("/dashboard/action")
def action():
    principal = session_principal()
    if principal is None:
        raise ApiError(401, "not logged in", code="login_required")
    check_csrf()
    form = {k: v for k, v in request.form.items()
            if k not in ("csrf_token", "jobIds", "back") and v != ""}
    if request.form.getlist("jobIds"):  # a selection (the failed list's checkboxes)
        form["jobIds"] = request.form.getlist("jobIds")
    if not principal.can("admin"):
        audit.record(str(form.get("action", "unknown"))[:40], "denied", status=403,
                     target={k: form[k] for k in ("queue", "jobId", "jobState") if k in form})
        raise ApiError(403, f"the read-only key {principal.name!r} may not change queues")
    result = actions.audited_mutation(form)
    if _wants_json():
        return jsonify(result)
    back = request.form.get("back", "")
    return redirect(back if back.startswith("/") and not back.startswith("//")
                    else url_for("dashboard.index"))
