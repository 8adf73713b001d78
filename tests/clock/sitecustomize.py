"""Lets a Python process run under Debian's libfaketime (a moved wall clock) on this machine.

Used by the tests that move a process's clock: PYTHONPATH=tests/clock, LD_PRELOAD of
libfaketime, FAKETIME=<offset> and FAKETIME_DONT_FAKE_MONOTONIC=1. With the monotonic clock
faked, libfaketime 0.9.10 breaks Python's timed waits (a 0.2 s Event.wait never returns);
with it real, it breaks time.sleep (clock_nanosleep gets EINVAL). Timed waits work then, so
time.sleep is served by one. Nothing happens without libfaketime.
"""

import os
import threading
import time

if "faketime" in os.environ.get("LD_PRELOAD", ""):
    _never_set = threading.Event()

    def _sleep(seconds: float) -> None:
        if seconds < 0:
            raise ValueError("sleep length must be non-negative")
        _never_set.wait(seconds)

    time.sleep = _sleep
