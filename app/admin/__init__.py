"""The Flask admin app: JSON admin API, enqueue API, webhook intake, dashboard, /metrics.

    gunicorn --config gunicorn.conf.py 'app.admin:create_app()'

Configuration is validated here, once, before the first request: a missing or bad variable
raises `worker.settings.SettingsError` (or its subclass `AdminConfigError`) naming it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import logging

from flask import Flask, has_request_context, request
from flask.sessions import SecureCookieSessionInterface
from werkzeug.middleware.proxy_fix import ProxyFix

from app.admin.config import AdminConfigError, AdminSettings, get_admin_settings
from worker.settings import Settings, get_settings

log = logging.getLogger("clarity.admin")


class SessionInterface(SecureCookieSessionInterface):
    """The session cookie is Secure whenever the request came over TLS (nginx tells us via
    X-Forwarded-Proto, which ProxyFix applies), so the same app works on the plain-HTTP
    development server."""

    def open_session(self, app: Flask, request):
        # The JSON API authenticates with bearer keys only: no cookie is read (a session
        # cookie cannot authorize an API call, so no CSRF there) and none is written.
        if request.path.startswith(("/api/", "/metrics")):
            return self.make_null_session(app)
        return super().open_session(app, request)

    def get_cookie_secure(self, app: Flask) -> bool:
        if has_request_context():
            return request.is_secure or bool(app.config["SESSION_COOKIE_SECURE"])
        return bool(app.config["SESSION_COOKIE_SECURE"])


SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Content-Security-Policy": ("default-src 'self'; img-src 'self' data:; object-src 'none'; "
                                "frame-ancestors 'none'; form-action 'self'; base-uri 'none'"),
}


def _session_secret(settings: Settings, admin: AdminSettings) -> bytes:
    if admin.admin_session_secret is not None:
        secret = admin.admin_session_secret.get_secret_value()
        if len(secret) < 16:
            raise AdminConfigError("invalid admin configuration:\n  ADMIN_SESSION_SECRET: must "
                                   "be at least 16 characters")
        return secret.encode()
    # Derived, so every gunicorn worker and admin host agrees without another secret.
    return hmac.new(settings.signing_secret.get_secret_value().encode(),
                    b"clarity-admin-session-v1", hashlib.sha256).digest()


def create_app(test_config: dict | None = None) -> Flask:
    from app.admin import actions, api, dashboard, errors, jobs, metrics, webhooks
    from app.admin.auth import KeyRing
    from app.admin.json_encoding import AdminJSONProvider
    from app.admin.limits import RateLimits
    from worker.connections import redis_client
    from worker.management import QueueManager
    from worker.registry import load_task_modules

    test_config = dict(test_config or {})
    settings: Settings = test_config.pop("CLARITY_SETTINGS", None) or get_settings()
    admin: AdminSettings = test_config.pop("CLARITY_ADMIN", None) or get_admin_settings()
    try:
        keys = admin.keys(settings.admin_api_key)
    except ValueError as exc:
        raise AdminConfigError(f"invalid admin configuration:\n  {exc}") from None
    if not keys:
        raise AdminConfigError("invalid admin configuration:\n  ADMIN_API_KEYS: no API key "
                               "configured (set ADMIN_API_KEYS, READONLY_API_KEYS or "
                               "ADMIN_API_KEY)")
    session_secret = _session_secret(settings, admin)

    app = Flask(__name__)
    app.session_interface = SessionInterface()
    app.config.update(
        SECRET_KEY=session_secret,
        SESSION_COOKIE_NAME="clarity_admin_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=False,
        PERMANENT_SESSION_LIFETIME=dt.timedelta(hours=admin.admin_session_hours),
        MAX_CONTENT_LENGTH=max(admin.admin_max_body_bytes, admin.webhook_max_body_bytes,
                               admin.enqueue_max_payload_bytes + 4096),
        JSON_SORT_KEYS=False,
        CLARITY_SETTINGS=settings,
        CLARITY_ADMIN=admin,
    )
    app.json = AdminJSONProvider(app)  # orjson where it gives the same document
    app.config.update(test_config)

    if admin.admin_proxy_hops:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=admin.admin_proxy_hops,
                                x_proto=admin.admin_proxy_hops, x_host=admin.admin_proxy_hops,
                                x_port=admin.admin_proxy_hops)

    client = redis_client(settings)
    app.extensions["clarity_redis"] = client
    app.extensions["clarity_manager"] = QueueManager(settings, client)
    app.extensions["clarity_keyring"] = KeyRing(keys, session_secret)
    app.extensions["clarity_views"] = actions.ViewCache()
    # The task declarations say which payload fields are sensitive (app.admin.redact).
    load_task_modules(settings.task_modules)
    RateLimits(app, client.connection_pool, settings.redis_key_prefix)

    errors.init_app(app)
    metrics.init_app(app)
    for blueprint in (api.bp, jobs.bp, webhooks.bp, dashboard.bp, metrics.bp):
        app.register_blueprint(blueprint)

    @app.after_request
    def _headers(response):
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        if request.endpoint != "dashboard.static":
            response.headers.setdefault("Cache-Control", "no-store")
        return response

    log.info("admin app ready: %d API keys (%s), redis %s", len(keys),
             ", ".join(sorted({k.kind for k in keys})), settings.redis_display())
    return app
