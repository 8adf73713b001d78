"""The five queues, job priorities and the Redis key layout of one queue."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from functools import cached_property

QUEUE_NAMES = ("sync", "email", "cleanup", "webhook", "notifications")


class Priority(enum.IntEnum):
    """Higher runs first; FIFO within one priority. Any integer 1..10 is accepted."""

    LOW = 1
    NORMAL = 3
    HIGH = 5
    CRITICAL = 10

    @classmethod
    def parse(cls, value) -> int:
        """A priority name ('high') or number (1..10) -> int; ValueError otherwise."""
        if isinstance(value, str) and not isinstance(value, bool):
            name = value.strip().upper()
            if name in cls.__members__:
                return int(cls[name])
            if name.isdigit():
                value = int(name)
            else:
                raise ValueError(
                    f"unknown priority {value!r}: use LOW, NORMAL, HIGH, CRITICAL or 1..10")
        if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 10:
            return int(value)
        raise ValueError(f"priority must be between 1 and 10, got {value!r}")


MIN_PRIORITY, MAX_PRIORITY = 1, 10
# Waiting score = (MAX_PRIORITY - priority) * PRIORITY_BAND + sequence: ZPOPMIN then
# yields the highest priority first and, within it, the lowest sequence (FIFO).
# Doubles are exact to 2**53, so 11 bands of 1e14 stay exact.
PRIORITY_BAND = 10**14


def waiting_score(priority: int, seq: int) -> int:
    """The waiting-set score (the Lua prelude's waiting_score is the same formula)."""
    return (MAX_PRIORITY - int(priority)) * PRIORITY_BAND + seq


def score_priority(score: float) -> int:
    """The priority a waiting-set score was made with."""
    return MAX_PRIORITY - int(score // PRIORITY_BAND)


def priority_band(priority: int) -> tuple[int, int]:
    """[low, high) of the waiting scores of one priority."""
    low = (MAX_PRIORITY - int(priority)) * PRIORITY_BAND
    return low, low + PRIORITY_BAND


class JobState(str, enum.Enum):
    WAITING = "waiting"
    DELAYED = "delayed"
    ACTIVE = "active"
    FAILED = "failed"


def check_queue(name: str) -> str:
    if name not in QUEUE_NAMES:
        raise ValueError(f"unknown queue {name!r}: expected one of {', '.join(QUEUE_NAMES)}")
    return name


@dataclass(frozen=True)
class QueueKeys:
    """Every Redis key of one queue. The `{queue}` hash tag keeps them in one cluster slot,
    so each Lua script touches a single slot."""

    prefix: str
    queue: str

    def _key(self, suffix: str) -> str:
        return f"{self.prefix}:{{{self.queue}}}:{suffix}"

    @cached_property
    def base(self) -> str:
        return self._key("")

    @cached_property
    def waiting(self) -> str:
        return self._key("waiting")

    @cached_property
    def delayed(self) -> str:
        return self._key("delayed")

    @cached_property
    def active(self) -> str:
        return self._key("active")

    @cached_property
    def failed(self) -> str:
        return self._key("failed")

    @cached_property
    def seq(self) -> str:
        return self._key("seq")

    @cached_property
    def wake(self) -> str:
        return self._key("wake")

    @cached_property
    def paused(self) -> str:
        return self._key("paused")

    @cached_property
    def job_prefix(self) -> str:
        return self._key("job:")

    def job(self, job_id: str) -> str:
        return self.job_prefix + job_id

    @cached_property
    def idem_prefix(self) -> str:
        return self._key("idem:")

    @cached_property
    def results(self) -> str:
        return self._key("results")

    @cached_property
    def counters(self) -> str:
        return self._key("counters")

    @cached_property
    def reaper_lock(self) -> str:
        return self._key("lock:reaper")

    def periodic_lock(self, tick: str) -> str:
        return self._key(f"lock:periodic:{tick}")

    @cached_property
    def workers(self) -> str:
        return self._key("workers")
