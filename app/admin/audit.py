"""Audit of every mutation made through the admin: who (the key's name, never the key),
what, when, result. The entry format, its size bounds and the capped Redis list are the
core's (`worker.audit`), shared with the CLI's mutations.

What is stored in the Redis list (shown on the dashboard) and what is only logged:
  * an authenticated caller's mutation, success or refusal: stored (bounded entry);
  * a request that did not authenticate (no key, a wrong key): logged only, whatever it
    sent. Anyone can send one, so storing it would let anyone fill Redis;
  * high-volume producer calls (enqueue, webhooks): logged only, so they cannot push
    operators' actions out of the list.
"""

from __future__ import annotations

from flask import current_app, g, request

from worker.audit import AuditLog, make_entry


def audit_log() -> AuditLog:
    log = current_app.extensions.get("clarity_audit")
    if log is None:
        settings = current_app.config["CLARITY_SETTINGS"]
        log = current_app.extensions["clarity_audit"] = AuditLog(
            current_app.extensions["clarity_redis"], settings.redis_key_prefix,
            settings.audit_max_entries, settings.audit_max_bytes)
    return log


def record(action: str, result: str, *, status: int, target: dict | None = None,
           who: str | None = None, via: str | None = None, detail: str | None = None,
           store: bool = True) -> dict:
    principal = g.get("clarity_principal")
    who = who or (principal.name if principal else None)
    entry = make_entry(action, result, status=status, who=who,
                       via=via or (principal.via if principal else "api"),
                       client=request.remote_addr, target=target, detail=detail)
    # Nobody authenticated: log it, never store it.
    audit_log().write(entry, store=store and who is not None)
    return entry


def recent(limit: int = 50) -> list[dict]:
    return audit_log().recent(limit)
