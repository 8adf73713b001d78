"""The operators' dashboard: server-rendered pages, refreshed in place by a little JS.

Login takes an admin or read-only key and keeps a signed session cookie (HttpOnly,
SameSite=Lax, Secure whenever the request came over TLS). Every form carries a CSRF token;
fetch() sends it as X-CSRF-Token. The panels are Jinja partials: the page renders them once
and /dashboard/panels re-renders them for the auto-refresh, so there is one template per
panel and no client-side rendering of untrusted text (payloads and tracebacks are escaped by
Jinja).
"""

from __future__ import annotations

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
from app.admin.errors import ApiError
from app.admin.limits import limit
from app.admin.redact import present

bp = Blueprint("dashboard", __name__, template_folder="templates", static_folder="static",
               static_url_path="/static/admin")

PANEL_ROWS = 10


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


def _context(principal) -> dict:
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
        "principal": principal,
        "can_mutate": principal.can("admin"),
        "overview": overview,
        "failed": failed[:PANEL_ROWS * 2],
        "delayed": delayed[:PANEL_ROWS * 2],
        "audit": audit.recent(15),
        "csrf": csrf_token(),
        "refresh_seconds": current_app.config["CLARITY_ADMIN"].dashboard_refresh_seconds,
    }


@bp.get("/")
def index():
    principal = session_principal()
    if principal is None:
        return redirect(url_for("dashboard.login"))
    return render_template("admin/dashboard.html", **_context(principal))


@bp.get("/dashboard/panels")
def panels():
    principal = session_principal()
    if principal is None:
        raise ApiError(401, "not logged in", code="login_required")
    return render_template("admin/panels.html", **_context(principal))


@bp.get("/login")
def login():
    if session_principal() is not None:
        return redirect(url_for("dashboard.index"))
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
    return redirect(url_for("dashboard.index"))


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
    form = {k: v for k, v in request.form.items() if k != "csrf_token" and v != ""}
    if not principal.can("admin"):
        audit.record(str(form.get("action", "unknown"))[:40], "denied", status=403,
                     target={k: form[k] for k in ("queue", "jobId", "jobState") if k in form})
        raise ApiError(403, f"the read-only key {principal.name!r} may not change queues")
    result = actions.audited_mutation(form)
    if _wants_json():
        return jsonify(result)
    return redirect(url_for("dashboard.index"))
