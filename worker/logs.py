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


def debug_requested() -> bool:
    """DEBUG=1 (or true/yes/on) in the environment forces DEBUG level, whatever LOG_LEVEL."""
    return os.environ.get("DEBUG", "").strip().lower() in {"1", "true", "yes", "on"}


def configure_logging(level: str = "INFO", fmt: str = "auto") -> None:
    """fmt: 'json', 'text' or 'auto' (text on a terminal, JSON otherwise)."""
    if debug_requested():
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
