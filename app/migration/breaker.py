"""A circuit breaker in front of Redis, one per producer process.

closed     every call goes to Redis; `failure_threshold` consecutive failures open it.
open       no call goes to Redis (the caller falls back at once, without a connect timeout
           per job); after `reset_seconds` the next caller becomes the probe.
half-open  exactly one call (the probe) goes to Redis; the others keep falling back. The
           probe's success closes the breaker, its failure opens it for another period.

Why: a producer serving web requests must not spend a connect timeout on every job while
Redis is down, and a Redis that is coming back (loading its AOF) must not be hammered by
every request thread at once.
"""

from __future__ import annotations

import enum
import threading
import time


class BreakerState(str, enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


class CircuitBreaker:
    def __init__(self, failure_threshold: int = 3, reset_seconds: float = 5.0,
                 clock=time.monotonic):
        self.failure_threshold = failure_threshold
        self.reset_seconds = reset_seconds
        self.clock = clock
        self._lock = threading.Lock()
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probing = False
        self.opened_count = 0  # how many times it opened (stats)

    @property
    def state(self) -> BreakerState:
        with self._lock:
            if (self._state is BreakerState.OPEN
                    and self.clock() - self._opened_at >= self.reset_seconds):
                return BreakerState.HALF_OPEN
            return self._state

    def allow(self) -> bool:
        """May this call go to Redis? In half-open state only the first caller (the probe)
        is allowed; it must report back with `success()` or `failure()`."""
        with self._lock:
            if self._state is BreakerState.CLOSED:
                return True
            if self._state is BreakerState.OPEN:
                if self.clock() - self._opened_at < self.reset_seconds:
                    return False
                self._state = BreakerState.HALF_OPEN
                self._probing = False
            if self._probing:
                return False
            self._probing = True
            return True

    def cancel(self) -> None:
        """The allowed call ended without telling anything about Redis (it raised something
        else): no verdict, but the probe slot is free again, so the breaker can never stay
        half-open with nobody probing."""
        with self._lock:
            self._probing = False

    def success(self) -> None:
        with self._lock:
            self._state = BreakerState.CLOSED
            self._failures = 0
            self._probing = False

    def failure(self) -> None:
        with self._lock:
            self._failures += 1
            if self._state is BreakerState.HALF_OPEN or (
                    self._state is BreakerState.CLOSED
                    and self._failures >= self.failure_threshold):
                self._state = BreakerState.OPEN
                self._opened_at = self.clock()
                self.opened_count += 1
            self._probing = False

    def snapshot(self) -> dict:
        state = self.state
        with self._lock:
            return {"state": state.value, "consecutiveFailures": self._failures,
                    "openedCount": self.opened_count,
                    "failureThreshold": self.failure_threshold,
                    "resetSeconds": self.reset_seconds}
