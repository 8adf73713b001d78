"""Audit log of every mutation: who (the key's name, never the key), what, when, result.

Written twice: as one JSON log line on the `clarity.audit` logger (shipped with the rest of
the logs), and to a capped Redis list (`<prefix>:audit`, newest first) that the dashboard
shows. A Redis outage must not hide the log line, so the line is written first.
High-volume producer calls (enqueue, webhooks) are logged but kept out of the Redis list, so
they cannot push operators' actions out of it.
"""

from __future__ import annotations

import datetime as dt
import json
import logging

import redis
from flask import current_app, g, request

log = logging.getLogger("clarity.audit")


def audit_key() -> str:
    return f"{current_app.config['CLARITY_SETTINGS'].redis_key_prefix}:audit"


def record(action: str, result: str, *, status: int, target: dict | None = None,
           who: str | None = None, via: str | None = None, detail: str | None = None,
           store: bool = True) -> dict:
    principal = g.get("clarity_principal")
    entry = {
        "at": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "who": who or (principal.name if principal else "anonymous"),
        "via": via or (principal.via if principal else "api"),
        "action": action,
        "target": target or {},
        "result": result,
        "status": status,
        "client": request.remote_addr,
    }
    if detail:
        entry["detail"] = detail[:500]
    line = json.dumps(entry, separators=(",", ":"), sort_keys=True)
    log.info(line)
    if not store:
        return entry
    try:
        client = current_app.extensions["clarity_redis"]
        pipe = client.pipeline(transaction=False)
        pipe.lpush(audit_key(), line)
        pipe.ltrim(audit_key(), 0, current_app.config["CLARITY_ADMIN"].audit_max_entries - 1)
        pipe.execute()
    except redis.RedisError as exc:  # the log line above is the record of last resort
        log.warning("audit entry not stored in Redis: %s", exc)
    return entry


def recent(limit: int = 50) -> list[dict]:
    client = current_app.extensions["clarity_redis"]
    out = []
    for raw in client.lrange(audit_key(), 0, max(0, limit - 1)):
        try:
            out.append(json.loads(raw))
        except ValueError:
            continue
    return out
