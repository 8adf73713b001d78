"""What of a job's payload a caller may see.

* A field its task declares sensitive (`@task(..., sensitive=("reset_url",))`) is shown to
  nobody: its value becomes "[redacted]" wherever it appears in the payload.
* A read-only key (dashboards, Grafana, on-call readers) sees the payload's shape, not its
  values: every value becomes "[redacted]" and the keys stay, so a reader can still tell
  which fields a job had.
* An admin key sees the rest.

Applied to everything the admin shows of a payload: the job view, the lists' summaries and
the dashboard.
"""

from __future__ import annotations

import json

from worker.management import SUMMARY_CHARS
from worker.registry import find_spec

REDACTED = "[redacted]"
MAX_DEPTH = 32


def sensitive_fields(queue: str, task: str | None) -> frozenset[str]:
    spec = find_spec(queue, task)
    return spec.sensitive if spec is not None else frozenset()


def redact(value, sensitive: frozenset[str] = frozenset(), everything: bool = False,
           depth: int = 0):
    """A copy of `value` with sensitive fields (or, with `everything`, every value)
    replaced by REDACTED."""
    if depth > MAX_DEPTH:
        return REDACTED
    if isinstance(value, dict):
        return {k: REDACTED if k in sensitive else redact(v, sensitive, everything, depth + 1)
                for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v, sensitive, everything, depth + 1) for v in value]
    if everything and value is not None:
        return REDACTED
    return value


def summary(payload) -> str:
    if payload is None:
        return ""
    text = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
    return text[:SUMMARY_CHARS] + ("…" if len(text) > SUMMARY_CHARS else "")


def present(job: dict, *, full_payload: bool, keep_payload: bool) -> dict:
    """`job` (with its raw `payload`) as this caller may see it: payload redacted,
    `payloadSummary` made from the redacted payload, `payload` kept only when asked."""
    job = dict(job)
    payload = job.pop("payload", None)
    shown = redact(payload, sensitive_fields(job.get("queue", ""), job.get("task")),
                   everything=not full_payload)
    job["payloadSummary"] = summary(shown)
    job["payloadRedacted"] = not full_payload or shown != payload
    if keep_payload:
        job["payload"] = shown
    return job
