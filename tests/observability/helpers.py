"""Small HTTP and Prometheus-text helpers for the observability tests."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families


def get(url: str, timeout: float = 3.0) -> tuple[int, str]:
    """(status, body); (0, reason) when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except (urllib.error.URLError, OSError) as exc:
        return 0, str(exc)


def get_json(url: str) -> tuple[int, dict | None]:
    code, body = get(url)
    try:
        return code, json.loads(body)
    except ValueError:
        return code, None


def scrape(url: str) -> dict[tuple[str, frozenset], float]:
    """{(sample name, frozenset(labels.items())): value} of a /metrics page."""
    code, body = get(url)
    assert code == 200, f"scrape of {url} answered {code}: {body[:300]}"
    out = {}
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: dict, name: str, **labels) -> float:
    """Sum of the samples called `name` whose labels include `labels` (0 when absent)."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def has(samples: dict, name: str) -> bool:
    return any(n == name for n, _ in samples)
