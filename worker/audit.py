"""The audit log of operators' mutations, shared by the admin app and the CLI.

Each entry is written twice: one JSON line on the `clarity.audit` logger (shipped with the
rest of the logs; written first, so a Redis outage cannot hide it), and into a capped Redis
list (`<prefix>:audit`, newest first) that the dashboard shows.

The list must never be a way to fill Redis: under `maxmemory-policy noeviction` a full
Redis stops every enqueue and lease. So every field is cut to a fixed length and an entry
to `ENTRY_MAX_BYTES` before it is stored, and the list is trimmed to
`min(AUDIT_MAX_ENTRIES, AUDIT_MAX_BYTES // ENTRY_MAX_BYTES)` entries: its size in bytes is
bounded without measuring it. Callers decide what is stored at all: a request that did not
authenticate is logged, never stored (anyone can send one).
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
import logging
import os

import redis

log = logging.getLogger("clarity.audit")

ENTRY_MAX_BYTES = 1024
FIELD_MAX_CHARS = {"who": 64, "via": 16, "action": 40, "result": 16, "client": 64,
                   "detail": 300}
TARGET_KEYS = ("queue", "jobId", "jobState", "jobIds", "provider", "task", "mode", "revision")
TARGET_VALUE_MAX_CHARS = 120


def audit_key(prefix: str) -> str:
    return f"{prefix}:audit"


def capacity(max_entries: int, max_bytes: int) -> int:
    """How many entries the list keeps: its byte bound divided by the largest entry."""
    return max(1, min(int(max_entries), int(max_bytes) // ENTRY_MAX_BYTES))


def _cut(value, limit: int) -> str:
    text = value if isinstance(value, str) else str(value)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _target(target: dict | None) -> dict:
    """Only the known target fields, each cut short: a caller's body never goes in whole."""
    out = {}
    for key in TARGET_KEYS:
        value = (target or {}).get(key)
        if value is None or isinstance(value, dict):
            continue
        if isinstance(value, list | tuple):
            value = f"{len(value)} job(s): " + ",".join(str(v)[:40] for v in value[:3])
        out[key] = _cut(value, TARGET_VALUE_MAX_CHARS)
    return out


def make_entry(action, result: str, *, status: int, who, via: str, client,
               target: dict | None = None, detail: str | None = None) -> dict:
    entry = {
        "at": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "who": _cut(who or "anonymous", FIELD_MAX_CHARS["who"]),
        "via": _cut(via, FIELD_MAX_CHARS["via"]),
        "action": _cut(action if isinstance(action, str) else "unknown",
                       FIELD_MAX_CHARS["action"]),
        "target": _target(target),
        "result": _cut(result, FIELD_MAX_CHARS["result"]),
        "status": int(status),
        "client": _cut(client or "-", FIELD_MAX_CHARS["client"]),
    }
    if detail:
        entry["detail"] = _cut(detail, FIELD_MAX_CHARS["detail"])
    return entry


def encode(entry: dict) -> str:
    """The entry as one JSON line of at most ENTRY_MAX_BYTES (UTF-8)."""
    line = json.dumps(entry, separators=(",", ":"), sort_keys=True)
    if len(line.encode()) <= ENTRY_MAX_BYTES:
        return line
    # Multi-byte characters can still push it over: shrink the free-text parts.
    entry = dict(entry, detail=_cut(entry.get("detail", ""), 60),
                 target={k: _cut(v, 30) for k, v in entry["target"].items()})
    line = json.dumps(entry, separators=(",", ":"), sort_keys=True)
    while len(line.encode()) > ENTRY_MAX_BYTES:  # pathological: keep the frame
        entry = {k: entry[k] for k in ("at", "action", "result", "status")}
        entry["who"] = "?"
        line = json.dumps(entry, separators=(",", ":"), sort_keys=True)
    return line


class AuditLog:
    """Writes entries to the log and (when `store`) to the bounded Redis list."""

    def __init__(self, client: redis.Redis, prefix: str, max_entries: int = 10_000,
                 max_bytes: int = 8 * 1024 * 1024):
        self.client = client
        self.key = audit_key(prefix)
        self.keep = capacity(max_entries, max_bytes)

    def write(self, entry: dict, *, store: bool = True) -> str:
        line = encode(entry)
        log.info(line)
        if store:
            try:
                pipe = self.client.pipeline(transaction=False)
                pipe.lpush(self.key, line)
                pipe.ltrim(self.key, 0, self.keep - 1)
                pipe.execute()
            except redis.RedisError as exc:  # the log line above is the record of last resort
                log.warning("audit entry not stored in Redis: %s", exc)
        return line

    def recent(self, limit: int = 50) -> list[dict]:
        out = []
        for raw in self.client.lrange(self.key, 0, max(0, limit - 1)):
            try:
                out.append(json.loads(raw))
            except ValueError:
                continue
        return out


def cli_identity() -> tuple[str, str]:
    """(who, client) of a CLI call: the OS user and this host."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return user, os.uname().nodename


def cli_audit(action: str, result: str, *, status: int, target: dict | None = None,
              detail: str | None = None) -> None:
    """One CLI mutation's entry: always the log line; the Redis list too when the settings
    load and Redis answers (`clarity db upgrade` must work without either)."""
    from worker.settings import SettingsError, get_settings

    who, client = cli_identity()
    entry = make_entry(action, result, status=status, who=who, via="cli", client=client,
                       target=target, detail=detail)
    try:
        settings = get_settings()
        from worker.connections import redis_client

        store = AuditLog(redis_client(settings), settings.redis_key_prefix,
                         settings.audit_max_entries, settings.audit_max_bytes)
    except SettingsError:
        log.info(encode(entry))
        return
    store.write(entry)
