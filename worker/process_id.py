"""This process's id, without a system call each time it is asked.

glibc no longer caches getpid(), so `os.getpid()` is a system call; the worker asked for it
about ten times per job (prometheus-client's multiprocess values check it on every
increment, to notice a fork). Here it is read once and again in a forked child only.
"""

from __future__ import annotations

import os

_pid = os.getpid()


def _after_fork_in_child() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_after_fork_in_child)


def current_pid() -> int:
    """os.getpid(), as of the last fork."""
    return _pid
