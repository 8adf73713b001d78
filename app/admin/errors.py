"""Every error leaves the app as JSON from one place: never an HTML page, never a traceback.

Body: {"error": <code>, "message": <text>, "status": <int>} plus "field" when one request
field is to blame. Unexpected exceptions are logged with their traceback server-side and the
client gets a bare 500 with a request reference it can quote.
"""

from __future__ import annotations

import logging
import uuid

import redis
from flask import Flask, jsonify, request
from flask_limiter.errors import RateLimitExceeded
from werkzeug.exceptions import HTTPException

log = logging.getLogger("clarity.admin")

CODES = {
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
    405: "method_not_allowed", 409: "conflict", 413: "payload_too_large",
    415: "unsupported_media_type", 422: "validation_error", 429: "rate_limited",
    500: "internal_error", 503: "unavailable",
}


class ApiError(Exception):
    """An error meant for the client: status, code, message and (maybe) the field."""

    def __init__(self, status: int, message: str, *, field: str | None = None,
                 code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field
        self.code = code or CODES.get(status, "error")
        self.headers = headers or {}


def error_response(status: int, message: str, *, field: str | None = None,
                   code: str | None = None, headers: dict | None = None):
    body = {"error": code or CODES.get(status, "error"), "message": message, "status": status}
    if field is not None:
        body["field"] = field
    response = jsonify(body)
    response.status_code = status
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def init_app(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError):
        return error_response(exc.status, exc.message, field=exc.field, code=exc.code,
                              headers=exc.headers)

    @app.errorhandler(RateLimitExceeded)
    def _rate_limited(exc: RateLimitExceeded):
        response = error_response(429, f"rate limit exceeded ({exc.description}); retry later")
        # Flask-Limiter adds Retry-After and X-RateLimit-* in its after_request hook.
        return response

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        status = exc.code or 500
        message = exc.description or exc.name
        if status == 413:
            limit = app.config.get("MAX_CONTENT_LENGTH")
            message = f"request body is larger than {limit} bytes"
        headers = {}
        valid_methods = getattr(exc, "valid_methods", None)
        if status == 405 and valid_methods:
            headers["Allow"] = ", ".join(valid_methods)
        return error_response(status, message, headers=headers)

    @app.errorhandler(redis.RedisError)
    def _redis_down(exc: redis.RedisError):
        log.error("redis error on %s %s: %s", request.method, request.path, exc)
        return error_response(503, "the queue store (Redis) is unavailable; try again shortly",
                              headers={"Retry-After": "5"})

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        if isinstance(exc, HTTPException):  # pragma: no cover - routed above
            return _http_error(exc)
        ref = uuid.uuid4().hex[:12]
        log.exception("unhandled error (ref %s) on %s %s", ref, request.method, request.path)
        return error_response(500, f"internal error (ref {ref})")
