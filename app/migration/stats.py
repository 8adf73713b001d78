"""The figures behind `get_detailed_stats()["migration"]` and `clarity migrate status`."""

from __future__ import annotations

import redis

from app.db.errors import explain_database_error
from app.dispatch import Counters, stats_key
from app.migration.config import MigrationSettings, get_migration_settings
from app.migration.legacy import LegacyStore, Origin, Status
from app.migration.router import Router
from worker.settings import Settings, get_settings


def _int(value) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def migration_stats(router: Router, store: LegacyStore | None, client: redis.Redis | None,
                    prefix: str, breaker: dict | None = None,
                    local: Counters | None = None) -> dict:
    """Jobs routed each way (all producers, from Redis; this process's own if Redis is
    down), the legacy backlog and moved count (from the table), the effective mode and
    `migrationPercentage`: the share of routed jobs that went to the queues, in percent."""
    mode, percentage, source = router.effective()
    s = router.settings
    routed = None
    if client is not None:
        try:
            raw = client.hgetall(stats_key(prefix))
            routed = {(k.decode() if isinstance(k, bytes) else k): _int(v)
                      for k, v in raw.items()}
        except redis.RedisError:
            routed = None
    scope = "all producers"
    if routed is None:
        routed, scope = (dict(local.totals) if local else {}), "this process"
    to_queue = routed.get("queue", 0)
    to_legacy = routed.get("legacy", 0)
    fallback = routed.get("fallback", 0) + routed.get("fallback_unsure", 0)
    total = to_queue + to_legacy + fallback
    table = None
    if store is not None:
        try:
            table = store.counts()
        except Exception as exc:  # noqa: BLE001 - a stats panel must not fail the caller
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            table = {"error": (explain_database_error(exc) or
                               f"{type(exc).__name__}: {first}")[:300]}
    out = {
        "enabled": s.enable_queue,
        "mode": mode,
        "modeSource": source,
        "configuredPercentage": percentage,
        "priorities": {"high": s.migrate_high_priority, "medium": s.migrate_medium_priority,
                       "low": s.migrate_low_priority},
        "fallbackToLegacy": s.fallback_to_legacy,
        "routed": {"queue": to_queue, "legacy": to_legacy, "fallback": fallback,
                   "scope": scope},
        "migrationPercentage": round(100.0 * to_queue / total, 2) if total else 0.0,
        "legacyBacklog": None,
        "moved": None,
        "legacy": table,
    }
    if table and "error" not in table:
        out["legacyBacklog"] = table["backlog"]
        out["moved"] = table["status"].get(Status.MOVED, 0)
        out["fallbackWaiting"] = table["origin"].get(Origin.FALLBACK_UNSURE, 0)
    if breaker is not None:
        out["breaker"] = breaker
    return out


def current_migration_stats(settings: Settings | None = None,
                            migration: MigrationSettings | None = None,
                            client: redis.Redis | None = None) -> dict:
    """The figures as an operator reads them (`clarity migrate status`, the admin's panel):
    from Redis and the legacy table, without building a producer."""
    from app.db.engine import get_engine
    from worker.connections import redis_client

    settings = settings or get_settings()
    migration = migration or get_migration_settings()
    client = client or redis_client(settings)
    router = Router(migration, client, settings.redis_key_prefix)
    return migration_stats(router, LegacyStore(get_engine()), client, settings.redis_key_prefix)
