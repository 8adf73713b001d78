"""Task declarations, independent of any Huey instance.

Handlers are declared at import time with `@task(...)`/`@periodic_task(...)`; the Huey
instance of each queue is built lazily (after settings are validated) and registers the
declared tasks then. Producers refer to a task by its short name, so non-Python producers
can name it too.

A handler takes one argument, the JSON payload (a dict), and must be idempotent: the queue
delivers at least once.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
from collections.abc import Callable
from dataclasses import dataclass, field

from worker.queues import Priority, check_queue

# Where task modules come from: the core's own (ping on every queue), the modules installed
# packages register under this entry point group (the Income Clarity domain registers its
# handlers in pyproject.toml), and TASK_MODULES. The core names no domain module.
CORE_TASK_MODULES = ("worker.builtin_tasks",)
ENTRY_POINT_GROUP = "clarity.task_modules"


@dataclass(frozen=True)
class TaskSpec:
    queue: str
    name: str
    func: Callable
    retries: int = 0
    retry_delay: float = 1.0  # first backoff step; doubles per attempt, with jitter
    retry_max_delay: float = 3600.0
    priority: int = Priority.NORMAL
    timeout: float | None = None
    schedule: Callable | None = None  # huey crontab(...) for periodic tasks
    extra: dict = field(default_factory=dict)
    # Payload field names (at any depth) never shown to people: the admin API, dashboard
    # and CLI print "[redacted]" instead, whatever the caller's key.
    sensitive: frozenset[str] = frozenset()

    @property
    def periodic(self) -> bool:
        return self.schedule is not None


_SPECS: dict[tuple[str, str], TaskSpec] = {}
_ALL_QUEUES = object()


def _register(spec: TaskSpec) -> None:
    key = (spec.queue, spec.name)
    existing = _SPECS.get(key)
    if existing is not None and existing.func is not spec.func:
        raise ValueError(f"task {spec.name!r} is already declared on queue {spec.queue!r}")
    _SPECS[key] = spec


def task(queue, *, name: str | None = None, retries: int = 0, retry_delay: float = 1.0,
         retry_max_delay: float = 3600.0, priority: int = Priority.NORMAL,
         timeout: float | None = None, sensitive: tuple[str, ...] | list[str] = ()):
    """Declare a handler on `queue` (a queue name, or a tuple of names). `sensitive`: payload
    field names (at any depth) that people never see (admin API, dashboard, CLI)."""
    queues = queue if isinstance(queue, tuple | list) else (queue,)
    if isinstance(sensitive, str):
        raise TypeError("sensitive takes a tuple of field names, e.g. sensitive=('token',)")

    def decorator(func):
        for q in queues:
            _register(TaskSpec(check_queue(q), name or func.__name__, func, retries,
                               retry_delay, retry_max_delay, Priority.parse(priority), timeout,
                               sensitive=frozenset(sensitive)))
        return func

    return decorator


def periodic_task(queue: str, schedule, *, name: str | None = None,
                  priority: int = Priority.NORMAL, timeout: float | None = None):
    """Declare a periodic handler; `schedule` is `huey.crontab(...)`. It fires once per
    tick across the whole fleet (a Redis lock per tick), however many workers run."""

    def decorator(func):
        _register(TaskSpec(check_queue(queue), name or func.__name__, func, 0, 1.0, 3600.0,
                           Priority.parse(priority), timeout, schedule))
        return func

    return decorator


_loaded: set = set()


@functools.cache
def installed_task_modules() -> tuple[str, ...]:
    """Modules registered by installed packages under the `clarity.task_modules` entry
    point group, sorted by entry point name (read once per process)."""
    found = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
    return tuple(ep.value for ep in sorted(found, key=lambda ep: ep.name))


def load_task_modules(extra: str | list[str] = "") -> None:
    """Import the modules that declare tasks: the core's, the installed ones (entry points)
    and `extra` (TASK_MODULES)."""
    if extra in _loaded:
        return  # the producer's hot path calls this on every enqueue
    key = extra if isinstance(extra, str) else None
    if isinstance(extra, str):
        extra = [m.strip() for m in extra.split(",") if m.strip()]
    for module in (*CORE_TASK_MODULES, *installed_task_modules(), *extra):
        importlib.import_module(module)
    if key is not None:
        _loaded.add(key)


def find_spec(queue: str, name: str | None) -> TaskSpec | None:
    """The declaration of `name` on `queue`, or None (unknown, or not loaded here)."""
    return _SPECS.get((queue, name)) if name else None


def specs_for(queue: str) -> list[TaskSpec]:
    return [spec for (q, _), spec in _SPECS.items() if q == queue]


def get_spec(queue: str, name: str) -> TaskSpec:
    check_queue(queue)
    spec = _SPECS.get((queue, name))
    if spec is None:
        known = ", ".join(sorted(s.name for s in specs_for(queue))) or "none"
        raise ValueError(f"unknown task {name!r} on queue {queue!r} (known: {known})")
    return spec
