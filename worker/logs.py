"""Logging: JSON lines in production, readable text on a terminal.

Every line a job writes carries the worker name, the queue and the job id, taken from a
context variable that the worker sets around each job (threads and processes alike).
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import sys
import time

_job_context: contextvars.ContextVar[dict | None] = contextvars.ContextVar("clarity_job",
                                                                      default=None)
_worker_name = {"name": "-"}


def set_worker_name(name: str) -> None:
    _worker_name["name"] = name


@contextlib.contextmanager
def job_context(queue: str, job_id: str, task: str):
    token = _job_context.set({"queue": queue, "job_id": job_id, "task": task})
    try:
        yield
    finally:
        _job_context.reset(token)


class ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        ctx = _job_context.get() or {}
        record.worker = _worker_name["name"]
        record.queue = ctx.get("queue", "-")
        record.job_id = ctx.get("job_id", "-")
        record.task = ctx.get("task", "-")
        return True


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "worker": getattr(record, "worker", "-"),
        }
        for field in ("queue", "job_id", "task"):
            value = getattr(record, field, "-")
            if value != "-":
                doc[field] = value
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


TEXT_FORMAT = ("%(asctime)s %(levelname)-7s %(worker)s [%(queue)s %(job_id)s] "
               "%(name)s: %(message)s")


# DEBUG namespaces that mean "the whole queue runtime": ours, and the original guide's
# (`DEBUG=bullmq:*`, the Node debug module's syntax).
RUNTIME_NAMESPACES = {"", "clarity", "bullmq", "huey", "queue", "worker"}


def debug_loggers(value: str | None = None) -> list[str] | None:
    """The loggers DEBUG asks to see at debug level: [""] (all) for DEBUG=1/true/yes/on,
    `*`, `clarity:*` or the guide's `bullmq:*`; ["clarity.<name>"] for `clarity:<name>`;
    None when DEBUG asks for nothing (unset, 0, false, or only other programs' namespaces).
    Several patterns may be given, separated by commas or spaces, as the debug module
    takes them."""
    raw = (os.environ.get("DEBUG", "") if value is None else value).strip()
    if raw.lower() in {"1", "true", "yes", "on"}:
        return [""]
    loggers: list[str] = []
    for pattern in raw.replace(",", " ").split():
        if pattern.startswith("-"):
            continue
        namespace, _, rest = pattern.partition(":")
        namespace = namespace.rstrip("*").lower()
        if namespace not in RUNTIME_NAMESPACES:
            continue
        rest = rest.strip("*").strip(":")
        if not rest or namespace in ("", "bullmq"):
            loggers.append("")
        else:
            loggers.append(f"clarity.{rest.replace(':', '.')}")
    return loggers or None


def debug_requested() -> bool:
    """DEBUG=1 (or true/yes/on, or a namespace pattern like `bullmq:*`) forces debug
    logging, whatever LOG_LEVEL."""
    return debug_loggers() is not None


class _ScopeFilter(logging.Filter):
    """With DEBUG=clarity:<name>, debug lines of that logger only; the rest at LOG_LEVEL."""

    def __init__(self, wanted: list[str], level: str):
        super().__init__()
        self.wanted = [w for w in wanted if w]
        self.level = logging.getLevelName(level) if isinstance(level, str) else level

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= self.level:
            return True
        return any(record.name == w or record.name.startswith(w + ".") for w in self.wanted)


def configure_logging(level: str = "INFO", fmt: str = "auto") -> None:
    """fmt: 'json', 'text' or 'auto' (text on a terminal, JSON otherwise)."""
    wanted = debug_loggers()
    if wanted == [""]:
        level = "DEBUG"
    if fmt == "auto":
        fmt = "text" if sys.stderr.isatty() else "json"
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(ContextFilter())
    handler.setFormatter(JSONFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Huey logs every execution at INFO; keep that at DEBUG unless asked.
    logging.getLogger("huey").setLevel(logging.WARNING if level != "DEBUG" else logging.DEBUG)
    scoped = [name for name in wanted or () if name]
    if scoped and level != "DEBUG":
        # DEBUG=clarity:worker: that part at debug level, everything else at LOG_LEVEL.
        root.setLevel(logging.DEBUG)
        handler.addFilter(_ScopeFilter(scoped, level))
