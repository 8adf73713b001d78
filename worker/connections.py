"""How a process reaches Redis: one host (REDIS_URL or REDIS_HOST/PORT), or the primary that
Redis Sentinel names (REDIS_SENTINELS + REDIS_SENTINEL_MASTER, or a redis+sentinel:// URL).

With Sentinel, redis-py's SentinelConnectionPool asks the sentinels for the primary when it
connects, and again when the one it knew stops being primary (a connection error, or a
READONLY answer from a demoted primary): a failover needs no restart. Pools are shared per
process and configuration, as Huey's instances are.

Every connection authenticates as REDIS_USERNAME (a Redis ACL user, redis/users.acl.j2) when
one is set, with the user in a redis:// URL, or as `default`; sentinels keep their own
password (REDIS_SENTINEL_PASSWORD).

With TLS (REDIS_TLS, or a rediss:// URL) every connection made here is TLS with the same CA
and client certificate: to the one host, to the sentinels, and to the primary they name
(redis-py's SentinelManagedSSLConnection). Nothing else in the project opens a connection
to Redis of its own, so this is where TLS applies.
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


def ssl_kwargs(settings: Settings) -> dict:
    """redis-py's arguments for TLS to a host given by name and port rather than a URL
    ({} without TLS)."""
    tls = settings.redis_tls_kwargs()
    return {"ssl": True, **tls} if tls else {}


def sentinel_for(settings: Settings, timeout: float | None = None) -> Sentinel:
    """A Sentinel client for the configured sentinels (cached per configuration)."""
    key = (settings.huey_key, "sentinel", timeout)
    with _lock:
        found = _sentinels.get(key)
        if found is None:
            target = settings.redis_target()
            socket_timeout, connect_timeout = _timeouts(settings, timeout)
            tls = ssl_kwargs(settings)
            sentinel_kwargs = {"socket_timeout": connect_timeout,
                               "socket_connect_timeout": connect_timeout, **tls}
            if target.sentinel_password:
                sentinel_kwargs["password"] = target.sentinel_password
            found = Sentinel(target.sentinels, sentinel_kwargs=sentinel_kwargs,
                             socket_timeout=socket_timeout,
                             socket_connect_timeout=connect_timeout,
                             username=target.username, password=target.password,
                             db=target.db, **tls)
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
        # ssl=True makes the pool's connections SentinelManagedSSLConnection.
        pool = SentinelConnectionPool(
            target.master, sentinel, username=target.username, password=target.password,
            db=target.db,
            socket_timeout=socket_timeout, socket_connect_timeout=connect_timeout,
            max_connections=MAX_CONNECTIONS, **ssl_kwargs(settings))
    else:
        # The URL's scheme (rediss://) picks SSLConnection; these are its arguments.
        pool = redis.ConnectionPool.from_url(
            target.url, socket_timeout=socket_timeout, socket_connect_timeout=connect_timeout,
            max_connections=MAX_CONNECTIONS, **settings.redis_tls_kwargs())
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


# How TLS failures read in redis-py's errors (OpenSSL's words through Python's ssl module;
# redis-py says "connecting to" for what failed during the handshake).
_UNTRUSTED_SERVER = "CERTIFICATE_VERIFY_FAILED"
_CLIENT_ALERTS = ("CERTIFICATE_REQUIRED", "UNKNOWN_CA", "BAD_CERTIFICATE", "CERTIFICATE_EXPIRED",
                  "HANDSHAKE_FAILURE")
_EOF = ("EOF occurred in violation of protocol", "UNEXPECTED_EOF")
# A TLS client on a plain port: Redis takes the ClientHello for a command and answers in
# plain text (not a TLS record), closes, or waits for the rest of it until the timeout.
_PLAIN_PORT = ("WRONG_VERSION_NUMBER", "wrong version number", "record layer failure",
               "packet length too long", "Timeout connecting")
_CLOSED_AT_ONCE = ("Connection reset by peer", "Connection closed by server")


def tls_failure(exc: BaseException, settings: Settings) -> str | None:
    """The likely cause, in the settings' terms, of a connection that failed over TLS (or
    of a plain one to what may be a TLS port); None when `exc` does not look like that."""
    text = str(exc)
    if not settings.tls:
        if isinstance(exc, redis.ConnectionError) and any(m in text for m in _CLOSED_AT_ONCE):
            return ("Redis closed the connection at once: if it listens with TLS there "
                    "(tls-port), set REDIS_TLS=true (or a rediss:// REDIS_URL) and "
                    "REDIS_TLS_CA_FILE")
        return None
    if _UNTRUSTED_SERVER in text:
        if "mismatch" in text:
            return ("the server's certificate does not name the address connected to: it must "
                    "carry the host's DNS name and IP addresses (Sentinel hands out IPs) as "
                    "subject alternative names, or set REDIS_TLS_CHECK_HOSTNAME=false")
        if "expired" in text:
            return "the server's certificate has expired: renew it on the Redis host"
        if settings.redis_tls_ca_file is None:
            return ("the server's certificate is not signed by a CA of the system's store: "
                    "set REDIS_TLS_CA_FILE to the CA that signed it")
        return (f"the server's certificate is not signed by the CA in REDIS_TLS_CA_FILE "
                f"({settings.redis_tls_ca_file}): wrong CA file")
    handshake = "connecting to" in text
    eof = any(m in text for m in _EOF)
    if any(m in text for m in _PLAIN_PORT) or (eof and handshake):
        return ("no TLS handshake: the port looks like Redis' plain port, not its tls-port "
                "(check REDIS_PORT, REDIS_URL or the sentinels' ports), or a firewall drops "
                "the connection")
    # Under TLS 1.3 a server refuses the client's certificate after the client thinks the
    # handshake is done: the first write or read after it meets the alert, or an EOF.
    if eof or any(m in text for m in _CLIENT_ALERTS):
        if settings.redis_tls_cert_file is None:
            return ("Redis asks for a client certificate (tls-auth-clients yes) and none is "
                    "configured: set REDIS_TLS_CERT_FILE and REDIS_TLS_KEY_FILE")
        return (f"Redis refused the client certificate ({settings.redis_tls_cert_file}): "
                "not signed by the CA Redis trusts (its tls-ca-cert-file), or expired")
    return None


def failure_text(exc: BaseException, settings: Settings) -> str:
    """A failed connection's error for logs and /health, with a TLS failure's likely cause."""
    cause = tls_failure(exc, settings)
    return f"{type(exc).__name__}: {exc}" + (f" (likely cause: {cause})" if cause else "")


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
