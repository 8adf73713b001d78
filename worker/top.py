"""`clarity top`: a live terminal view of the queues for a person on a server without a
browser, and the view `clarity up` (so `make up`) shows.

Everything comes from Redis in two round trips per refresh: the counts, heartbeats and
memory (`QueueManager.snapshot`), and the last minutes of the workers' per-minute series
(`worker.series`) for rates and pickup latency. So it works from any host that reaches
Redis, whatever the number of workers.
"""

from __future__ import annotations

import time

from worker.queues import QUEUE_NAMES
from worker.series import WAIT_BUCKETS_MS, percentile_ms, series_key

RATE_MINUTES = 5


def collect(manager, minutes: int = RATE_MINUTES) -> dict:
    """One snapshot: counts, workers, Redis memory, and per queue the rates and latency of
    the last `minutes` minutes."""
    counts, workers, info = manager.snapshot(info_sections=("memory",))
    client, prefix = manager.redis, manager.settings.redis_key_prefix
    seconds, _ = client.time()
    now_minute = int(seconds) // 60
    pipe = client.pipeline(transaction=False)
    for queue in QUEUE_NAMES:
        for minute in range(now_minute - minutes + 1, now_minute + 1):
            pipe.hgetall(series_key(prefix, queue, minute))
    rows = pipe.execute()
    rates = {}
    for index, queue in enumerate(QUEUE_NAMES):
        merged: dict[str, int] = {}
        for row in rows[index * minutes:(index + 1) * minutes]:
            for field, value in row.items():
                name = field.decode() if isinstance(field, bytes) else field
                if not name.startswith("depth"):
                    merged[name] = merged.get(name, 0) + int(value)
        buckets = [merged.get(f"w{i}", 0) for i in range(len(WAIT_BUCKETS_MS) + 1)]
        rates[queue] = {"completed": merged.get("completed", 0) / minutes,
                        "failed": merged.get("failed", 0) / minutes,
                        "p50": percentile_ms(buckets, 0.5), "p95": percentile_ms(buckets, 0.95)}
    return {"at": time.time(), "counts": counts, "workers": workers, "rates": rates,
            "memory": info or {}, "minutes": minutes}


def _ms(value) -> str:
    if value is None:
        return "-"
    return f"{value / 1000:.1f}s" if value >= 1000 else f"{value:.0f}ms"


def render(view: dict, title: str = "Clarity queues", local: dict | None = None):
    """The view as rich renderables: a queue table, a worker table, a status line.
    `local`: per queue the state of a worker this process runs (`clarity up`)."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    queues = Table(title=title, title_justify="left", expand=False)
    columns = ["queue", "waiting", "delayed", "active", "failed", "done/min", "failed/min",
               "pickup p50", "p95", "workers"]
    if local is not None:
        columns.append("local worker")
    for col in columns:
        queues.add_column(col, justify="left" if col in ("queue", "local worker") else "right")
    counts, rates = view.get("counts") or {}, view.get("rates") or {}
    alive = {q: 0 for q in QUEUE_NAMES}
    for w in view.get("workers") or []:
        if w.get("alive") and w.get("queue") in alive:
            alive[w["queue"]] += 1
    for queue in QUEUE_NAMES:
        c, r = counts.get(queue), rates.get(queue, {})
        if c is None:
            continue
        row = [queue + (" [yellow](paused)[/]" if c["paused"] else ""), str(c["waiting"]),
               str(c["delayed"]), str(c["active"]),
               f"[red]{c['failed']}[/]" if c["failed"] else "0",
               f"{r.get('completed', 0):.1f}", f"{r.get('failed', 0):.1f}",
               _ms(r.get("p50")), _ms(r.get("p95")),
               f"[green]{alive[queue]}[/]" if alive[queue] else "[red]0[/]"]
        if local is not None:
            state = (local.get(queue) or {}).get("state", "-")
            row.append(f"[{'green' if state == 'up' else 'red'}]{state}[/]")
        queues.add_row(*row)

    workers = Table(title="Workers (heartbeats)", title_justify="left")
    for col in ("name", "queue", "heartbeat", "running", "processed", "failed"):
        workers.add_column(col, justify="left" if col in ("name", "queue") else "right")
    for w in sorted(view.get("workers") or [], key=lambda w: (w.get("queue", ""),
                                                                 w.get("name", ""))):
        beat = f"{w.get('secondsSinceHeartbeat', 0):.0f}s ago"
        workers.add_row(w.get("name", "?"), w.get("queue", "?"),
                        beat if w.get("alive") else f"[red]{beat}[/]",
                        f"{w.get('active', 0)}/{w.get('concurrency', '?')}",
                        str(w.get("processed", 0)), str(w.get("failed", 0)))
    memory = view.get("memory") or {}
    used, limit = memory.get("used_memory"), memory.get("maxmemory")
    line = (f"Redis memory {used / 2**20:.1f} MiB" if used else "Redis memory ?") + \
        (f" of {limit / 2**20:.0f} MiB" if limit else "") + \
        f" · rates and latency over the last {view.get('minutes', RATE_MINUTES)} min · " + \
        time.strftime("%H:%M:%S")
    if view.get("error"):
        line = f"[red]Redis: {view['error']}[/]"
    return Group(queues, workers, Text.from_markup(line))
