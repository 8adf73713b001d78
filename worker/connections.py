"""How a process reaches Redis: one host (REDIS_URL or REDIS_HOST/PORT), or the primary that
Redis Sentinel names (REDIS_SENTINELS + REDIS_SENTINEL_MASTER, or a redis+sentinel:// URL).

With Sentinel, redis-py's SentinelConnectionPool asks the sentinels for the primary when it
connects, and again when the one it knew stops being primary (a connection error, or a
READONLY answer from a demoted primary): a failover needs no restart. Pools are shared per
process and configuration, as Huey's instances are.

Every connection authenticates as REDIS_USERNAME (a Redis ACL user, redis/users.acl.j2) when
one is set, with the user in a redis:// URL, or as `default`; sentinels keep their own
password (REDIS_SENTINEL_PASSWORD).
"""

from __future__ import annotations

import threading

import redis
from redis.sentinel import Sentinel, SentinelConnectionPool

from worker.settings import Settings, get_settings

MAX_CONNECTIONS = 512

_pools: dict[tuple, redis.ConnectionPool] = {}
_sentinels: dict[tuple, Sentinel] = {}
_lock = threading.Lock()


def _timeouts(settings: Settings, timeout: float | None) -> tuple[float, float]:
    """(socket, connect) timeouts: the settings' (a reply may take a little longer than a
    connect), or exactly `timeout` for a short-fused probe."""
    if timeout is None:
        return settings.redis_socket_timeout + 2, settings.redis_socket_timeout
    return timeout, timeout


def sentinel_for(settings: Settings, timeout: float | None = None) -> Sentinel:
    """A Sentinel client for the configured sentinels (cached per configuration)."""
    key = (settings.huey_key, "sentinel", timeout)
    with _lock:
        found = _sentinels.get(key)
        if found is None:
            target = settings.redis_target()
            socket_timeout, connect_timeout = _timeouts(settings, timeout)
            sentinel_kwargs = {"socket_timeout": connect_timeout,
                               "socket_connect_timeout": connect_timeout}
            if target.sentinel_password:
                sentinel_kwargs["password"] = target.sentinel_password
            found = Sentinel(target.sentinels, sentinel_kwargs=sentinel_kwargs,
                             socket_timeout=socket_timeout,
                             socket_connect_timeout=connect_timeout,
                             username=target.username, password=target.password,
                             db=target.db)
            _sentinels[key] = found
        return found


def connection_pool(settings: Settings, timeout: float | None = None) -> redis.ConnectionPool:
    """The shared pool of this configuration; `timeout` for short-fused probes (health)."""
    key = (settings.huey_key, timeout)
    with _lock:
        pool = _pools.get(key)
    if pool is not None:
        return pool
    target = settings.redis_target()
    socket_timeout, connect_timeout = _timeouts(settings, timeout)
    if target.sentinels:
        sentinel = sentinel_for(settings, timeout)
        pool = SentinelConnectionPool(
            target.master, sentinel, username=target.username, password=target.password,
            db=target.db,
            socket_timeout=socket_timeout, socket_connect_timeout=connect_timeout,
            max_connections=MAX_CONNECTIONS)
    else:
        pool = redis.ConnectionPool.from_url(
            target.url, socket_timeout=socket_timeout, socket_connect_timeout=connect_timeout,
            max_connections=MAX_CONNECTIONS)
    with _lock:
        return _pools.setdefault(key, pool)


def permission_denied(exc: BaseException) -> bool:
    """Whether Redis refused a command for the ACL user's want of permission: NOPERM, or the
    same refusal of a command a Lua script ran (a plain error reply naming the script)."""
    if isinstance(exc, redis.exceptions.NoPermissionError):
        return True
    text = str(exc)
    return isinstance(exc, redis.ResponseError) and (
        "NOPERM" in text or "no permissions" in text
        or "user executing the script can't" in text)


def redis_client(settings: Settings | None = None, timeout: float | None = None) -> redis.Redis:
    return redis.Redis(connection_pool=connection_pool(settings or get_settings(), timeout))


def topology(settings: Settings) -> dict:
    """Where Redis is now: {"mode": "single", "primary": "host:port"} or, with Sentinel,
    {"mode": "sentinel", "master": name, "primary": "host:port", "replicas": [...],
    "sentinels": [...]}. Raises redis errors when the sentinels cannot say."""
    target = settings.redis_target()
    if not target.sentinels:
        return {"mode": "single", "primary": target.display_address}
    sentinel = sentinel_for(settings)
    primary = sentinel.discover_master(target.master)
    replicas = sentinel.discover_slaves(target.master)
    return {"mode": "sentinel", "master": target.master,
            "primary": f"{primary[0]}:{primary[1]}",
            "replicas": [f"{host}:{port}" for host, port in replicas],
            "sentinels": [f"{host}:{port}" for host, port in target.sentinels]}


def reset() -> None:
    """Forget pools and sentinel clients (tests, and after changing settings)."""
    with _lock:
        for pool in _pools.values():
            pool.disconnect()
        _pools.clear()
        _sentinels.clear()
