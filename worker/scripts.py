"""The storage's Lua scripts: each file under worker/lua/ with the shared prelude in front.

Read once per process; the priority band and maximum come from worker.queues, so the
waiting-score formula has one definition for Python and Lua.
"""

from __future__ import annotations

import functools
from importlib import resources

from worker.queues import MAX_PRIORITY, PRIORITY_BAND

NAMES = ("enqueue", "lease", "renew", "reap", "promote", "move_failed", "remove", "expired",
         "prune_failed", "resign")


def _read(name: str) -> str:
    return resources.files("worker.lua").joinpath(f"{name}.lua").read_text()


@functools.cache
def prelude() -> str:
    return (_read("prelude").replace("{{PRIORITY_BAND}}", str(PRIORITY_BAND))
            .replace("{{MAX_PRIORITY}}", str(MAX_PRIORITY)))


@functools.cache
def source(name: str) -> str:
    """The full text Redis runs for script `name`."""
    if name not in NAMES:
        raise ValueError(f"no Lua script {name!r}")
    return prelude() + _read(name)
