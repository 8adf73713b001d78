"""The migration's settings, read like the queue core's: environment and `.env`, typed,
and a bad value raises `SettingsError` naming the variable.

| variable                  | default  | meaning                                               |
|---------------------------|----------|-------------------------------------------------------|
| ENABLE_QUEUE              | false    | off: every job goes to the legacy table               |
| MIGRATION_MODE            | testing  | testing, gradual or immediate                         |
| MIGRATION_PERCENTAGE      | 10       | testing: share of users (0..100) whose jobs use queues|
| MIGRATE_HIGH_PRIORITY     | true     | gradual: HIGH and CRITICAL jobs use the queues        |
| MIGRATE_MEDIUM_PRIORITY   | false    | gradual: NORMAL jobs (priority 3, 4) use the queues   |
| MIGRATE_LOW_PRIORITY      | false    | gradual: LOW jobs (priority 1, 2) use the queues      |
| FALLBACK_TO_LEGACY        | true     | Redis cannot take a job: write it to the legacy table |
| MIGRATE_EXISTING_JOBS     | false    | allow `clarity migrate run` to move legacy rows       |
| BREAKER_FAILURE_THRESHOLD | 3        | consecutive Redis failures that open the breaker      |
| BREAKER_RESET_SECONDS     | 5        | open this long, then one probe (half-open)            |
| MIGRATION_OVERRIDE_TTL    | 2        | seconds the router caches the rollback switch         |
| LEGACY_CLAIM_SECONDS      | 300      | a claim older than this was a crashed poller's        |
| FALLBACK_DEDUPE_SECONDS   | 86400    | with the fallback on, the queue keeps each job's id   |
|                           |          | this long, so an unsure hand-back cannot run it twice |
"""

from __future__ import annotations

import enum
import logging
import os
from functools import lru_cache

from pydantic import AliasChoices, Field

from worker.settings import ClarityBaseSettings, load


class MigrationMode(str, enum.Enum):
    TESTING = "testing"
    GRADUAL = "gradual"
    IMMEDIATE = "immediate"


class MigrationSettings(ClarityBaseSettings):

    # ENABLE_BULLMQ: the original guide's name, read when ENABLE_QUEUE is not set (deprecated).
    enable_queue: bool = Field(default=False,
                               validation_alias=AliasChoices("enable_queue", "enable_bullmq"))
    migration_mode: MigrationMode = MigrationMode.TESTING
    migration_percentage: float = Field(default=10.0, ge=0, le=100)
    migrate_high_priority: bool = True
    migrate_medium_priority: bool = False
    migrate_low_priority: bool = False
    fallback_to_legacy: bool = True
    migrate_existing_jobs: bool = False
    breaker_failure_threshold: int = Field(default=3, ge=1, le=1000)
    breaker_reset_seconds: float = Field(default=5.0, gt=0, le=3600)
    migration_override_ttl: float = Field(default=2.0, ge=0, le=300)
    legacy_claim_seconds: float = Field(default=300.0, gt=0, le=86_400)
    # How long the queue remembers a job's id against an unsure fallback's hand-back (only
    # with FALLBACK_TO_LEGACY). An unsure row handed back later than this may run twice.
    fallback_dedupe_seconds: float = Field(default=86_400.0, ge=60, le=30 * 86_400)


DEPRECATED = {"ENABLE_BULLMQ": "ENABLE_QUEUE"}


def _deprecated_names_in_use() -> list[str]:
    from dotenv import dotenv_values

    names = {k.upper() for k in os.environ}
    try:
        names |= {k.upper() for k in dotenv_values(os.environ.get("CLARITY_ENV_FILE", ".env"))}
    except OSError:
        pass
    return [old for old in DEPRECATED if old in names]


def load_migration_settings(**overrides) -> MigrationSettings:
    for old in _deprecated_names_in_use():
        logging.getLogger("clarity.config").warning(
            "%s is deprecated: it is read as %s (set %s instead; when both are set, %s wins)",
            old, DEPRECATED[old], DEPRECATED[old], DEPRECATED[old])
    return load(MigrationSettings, "migration configuration", **overrides)


@lru_cache(maxsize=1)
def get_migration_settings() -> MigrationSettings:
    return load_migration_settings()


def reset_migration_settings_cache() -> None:
    get_migration_settings.cache_clear()
