"""Rate limits shared by every gunicorn worker and admin host, counted in Redis.

Uses `limits` (the engine under Flask-Limiter) directly: one fixed-window counter per
client and scope, one Lua call (INCR + EXPIRE) per request on the queue's own Redis
connection pool. Nothing here needs KEYS/FLUSHDB/CONFIG, which our redis.conf renames away
(never call the storage's `reset()`: it runs KEYS).

The client is the API key's name when a valid key is presented (each producer and operator
gets its own budget however many addresses it comes from), otherwise the client address as
ProxyFix restored it from nginx's X-Forwarded-For.
"""

from __future__ import annotations

import logging
import math
import time

import redis
from flask import Flask, current_app, g, request
from limits import parse
from limits.storage import RedisStorage
from limits.strategies import FixedWindowRateLimiter

from app.admin.auth import bearer_principal, session_principal
from app.admin.errors import ApiError

log = logging.getLogger("clarity.admin")


class RateLimits:
    def __init__(self, app: Flask, pool, prefix: str):
        self.storage = RedisStorage("redis://", connection_pool=pool,
                                    key_prefix=f"{prefix}:ratelimit")
        self.limiter = FixedWindowRateLimiter(self.storage)
        self.items: dict[str, object] = {}
        app.extensions["clarity_limits"] = self

    def item(self, spec: str):
        item = self.items.get(spec)
        if item is None:
            item = self.items[spec] = parse(spec)
        return item

    def check(self, scope: str, spec: str, client: str) -> None:
        """Count one request; ApiError(429) with Retry-After once the budget is spent."""
        item = self.item(spec)
        try:
            allowed = self.limiter.hit(item, scope, client)
        except redis.RedisError as exc:  # Redis down: the request itself will report it
            log.warning("rate limit not checked (%s): %s", scope, exc)
            return
        if allowed:
            return
        try:
            reset_at, _remaining = self.limiter.get_window_stats(item, scope, client)
            retry_after = max(1, math.ceil(reset_at - time.time()))
        except redis.RedisError:
            retry_after = int(item.get_expiry())
        raise ApiError(429, f"rate limit of {spec} exceeded for this client; retry in "
                            f"{retry_after} s", headers={"Retry-After": str(retry_after)})


def client_id(dashboard: bool = False) -> str:
    principal = session_principal() if dashboard else bearer_principal()
    if principal is not None:
        return f"key:{principal.name}"
    return f"ip:{request.remote_addr}"


def limit(scope: str, setting: str, *, dashboard: bool = False, client: str | None = None):
    """Apply the rate limit named by the admin setting `setting` under `scope`."""
    cfg = current_app.config["CLARITY_ADMIN"]
    if not cfg.rate_limit_enabled or g.get("clarity_limited"):
        return
    g.clarity_limited = True
    current_app.extensions["clarity_limits"].check(
        scope, getattr(cfg, setting), client or client_id(dashboard))
