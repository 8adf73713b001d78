from __future__ import annotations

from worker.hueys import redis_client
from worker.settings import get_settings


def test_key(name: str) -> str:
    return f"{get_settings().redis_key_prefix}:test:{name}"


def recorded(name: str) -> list[str]:
    return [v.decode() for v in redis_client().lrange(test_key(name), 0, -1)]
