"""The storage's Lua scripts: each file under worker/lua/ with the shared prelude in front.

Read once per process; the priority band and maximum come from worker.queues, so the
waiting-score formula has one definition for Python and Lua.
"""

from __future__ import annotations

import functools
import select
import threading
from importlib import resources

import hiredis
import redis
from redis.exceptions import NoScriptError

from worker.process_id import current_pid
from worker.queues import MAX_PRIORITY, PRIORITY_BAND

NAMES = ("enqueue", "enqueue_now", "lease", "renew", "reap", "promote", "move_failed", "remove",
         "expired", "prune_failed", "resign", "counts", "page")


def _read(name: str) -> str:
    return resources.files("worker.lua").joinpath(f"{name}.lua").read_text()


# Scripts that run without the prelude: Redis runs a script's whole text on every call, so
# the prelude's function definitions cost each call a little; the hottest script spells out
# the little it needs.
BARE = frozenset({"enqueue_now"})
# How many wake tokens the list keeps: idle consumers need at most one each; trimmed back only
# past four times that, so a backlog (no idle consumer) costs one LTRIM per 768 enqueues.
WAKE_TOKENS_MAX = 256


def _constants(text: str) -> str:
    return (text.replace("{{PRIORITY_BAND}}", str(PRIORITY_BAND))
            .replace("{{MAX_PRIORITY}}", str(MAX_PRIORITY))
            .replace("{{WAKE_TOKENS_MAX}}", str(WAKE_TOKENS_MAX))
            .replace("{{WAKE_TOKENS_TRIM_AT}}", str(4 * WAKE_TOKENS_MAX)))


@functools.cache
def prelude() -> str:
    return _constants(_read("prelude"))


@functools.cache
def source(name: str) -> str:
    """The full text Redis runs for script `name`."""
    if name not in NAMES:
        raise ValueError(f"no Lua script {name!r}")
    return _constants(_read(name)) if name in BARE else prelude() + _read(name)


class _Pinned:
    """A pool connection this thread keeps between script calls, handed back to the pool
    when the thread ends (a thread-local's values are dropped with its thread)."""

    __slots__ = ("_polled", "_poller", "conn", "pid", "pool")

    def __init__(self, pool):
        self.pool, self.pid = pool, current_pid()
        self.conn = pool.get_connection()
        self._poller = self._polled = None

    def __del__(self):
        # No `conn` when connecting failed in __init__ (Redis unreachable): nothing to hand
        # back. A forked child must not touch its parent's socket.
        conn = getattr(self, "conn", None)
        if conn is not None and self.pid == current_pid():
            self.pool.release(conn)

    def closed_while_idle(self) -> bool:
        """Whether the connection has something to read before we asked: the server closed
        it (Redis restarted, its idle timeout) or reset it. What the pool checks on every
        checkout (`Connection.can_read`), with one poll() on a poll object kept for the
        socket: redis-py builds a new one per check, about 4 us of an enqueue's 75."""
        sock = self.conn._sock
        if sock is None:
            return False
        if sock is not self._polled:
            self._poller, self._polled = select.poll(), sock
            self._poller.register(sock, select.POLLIN)  # POLLHUP and POLLERR come anyway
        pending = getattr(sock, "pending", None)  # TLS: bytes decrypted but not read
        return bool(pending and pending()) or bool(self._poller.poll(0))


class FastScript:
    """A Lua script run with EVALSHA straight on a connection this thread keeps.

    redis-py's `Script.__call__` goes through `evalsha`, `execute_command`, a pool checkout,
    its retry and observability layers: on this machine about as much CPU as the whole
    enqueue script takes in Redis, and every job pays it twice (enqueue, lease). The happy
    path here packs with hiredis, sends and reads, with the pool's own check of an idle
    connection before each use. NOSCRIPT after a restart or failover, pipelines and cluster
    clients go through redis-py's own `Script`; a connection error is raised as redis-py
    raises it (the pool's connections never retry), dropping the connection.
    """

    _local = threading.local()

    def __init__(self, client, text: str):
        self._script = client.register_script(text)
        self._pool = client.connection_pool if isinstance(client, redis.Redis) else None
        self._head = ("EVALSHA", self._script.sha)

    @property
    def sha(self) -> str:
        return self._script.sha

    @property
    def script(self) -> str:
        return self._script.script

    def _connection(self):
        pinned = getattr(self._local, "pinned", None)
        if pinned is None or pinned.pool is not self._pool or pinned.pid != current_pid():
            pinned = self._local.pinned = _Pinned(self._pool)
        # A connection the server closed while idle is not sent on but reconnected, so an
        # idle spell never costs a failed call.
        if pinned.closed_while_idle():
            pinned.conn.disconnect()
        return pinned.conn

    def _round_trip(self, *commands) -> list:
        """Send `commands` in one write on this thread's connection; their replies. Every
        reply is read before an error reply is raised (the first one), so the connection
        never keeps an unread reply for the next caller."""
        conn = self._connection()
        # Joined into one buffer: redis-py sends each item of a list with its own sendall,
        # a system call (and on TCP a segment Redis wakes up for) per command.
        conn.send_packed_command([b"".join([hiredis.pack_command(c) for c in commands])],
                                 check_health=False)
        replies, error = [], None
        for _ in commands:
            try:
                replies.append(conn.read_response())
            except redis.ResponseError as exc:
                error = error or exc
                replies.append(exc)
        if error is not None:
            raise error
        return replies

    def round_trip(self, commands, script_calls) -> list | None:
        """`commands` (raw tuples, replies unparsed: INFO is bytes, TIME a list) and this
        script once per (keys, args) in `script_calls`, all in one write and one round
        trip; the replies in that order. None when this client has no fast path (a cluster):
        the caller then uses `pipeline`. Loads the script once if Redis did not know it."""
        if self._pool is None:
            return None
        sent = [*commands, *(self._evalsha(keys, args) for keys, args in script_calls)]
        try:
            try:
                return self._round_trip(*sent)
            except NoScriptError:  # Redis restarted or failed over
                self._script.registered_client.script_load(self.script)
                return self._round_trip(*sent)
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            self._local.pinned = None
            raise

    def _evalsha(self, keys, args) -> tuple:
        return (*self._head, len(keys), *keys, *args)

    def __call__(self, keys=(), args=(), client=None):
        if self._pool is None or client is not None:  # e.g. queued on a pipeline
            return self._script(keys=keys, args=args, client=client)
        try:
            return self._round_trip(self._evalsha(keys, args))[0]
        except NoScriptError:  # Redis restarted or failed over: redis-py loads it again
            return self._script(keys=keys, args=args)
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            # Raised as it is, never retried here: after a connection lost mid-call nobody
            # knows whether the script ran, and the caller must be told so (a producer's
            # fallback treats "unsure" apart from "refused"; a retry that then found Redis
            # gone would have said "refused" and let a job that landed run twice).
            self._local.pinned = None
            raise

    def after(self, command: tuple, keys=(), args=()):
        """Send `command` and this script together (one write, one round trip) and return
        both replies; Redis runs the script once `command` is done, even a blocking one.
        None when this client has no fast path or the connection failed (the caller then
        uses a redis-py pipeline); NoScriptError passes through."""
        if self._pool is None:
            return None
        try:
            return self._round_trip(command, self._evalsha(keys, args))
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            self._local.pinned = None
            return None

    def queue(self, pipe, keys=(), args=()) -> None:
        """Queue this script on a redis-py pipeline as a bare EVALSHA: redis-py's `Script`
        on a pipeline asks SCRIPT EXISTS first, one more round trip per pipeline."""
        pipe.evalsha(self.sha, len(keys), *keys, *args)

    def pipeline(self, client, fill) -> list:
        """Run a pipeline that `fill(pipe)` builds, with this script `queue`d on it; built
        and sent once more after loading the script if Redis did not know it (restarted,
        failed over, or a fresh server)."""
        try:
            return self._filled(client, fill).execute()
        except NoScriptError:
            client.script_load(self.script)
        return self._filled(client, fill).execute()

    @staticmethod
    def _filled(client, fill):
        pipe = client.pipeline(transaction=False)
        fill(pipe)
        return pipe
