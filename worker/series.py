"""Per-minute series of each queue, written by the workers and kept in Redis: what the
admin's charts draw, with no Prometheus needed (the embedded default has none).

Per queue and minute (Redis' clock), one small hash `<prefix>:{<queue>}:series:<minute>`
expiring after `RETENTION_SECONDS` (a day and an hour), so the whole store is bounded:
about 1,500 keys of a few hundred bytes per queue. Fields:

    completed, failed, retried, other   executions ending so (failed = for good)
    dur_ms                             total running time of those executions
    w0 .. w<n>                         pickup latency histogram (WAIT_BUCKETS_MS upper
                                       bounds; the last is +inf): p50/p95 come from it
    depth, depth_max                   jobs waiting, sampled at each flush

A `SeriesRecorder` subscribes to the runtime's events and only adds to a dict in memory
(bounded: a handful of counters per queue); a flusher thread per process writes the sums
every `FLUSH_SECONDS` with one script call per queue (the minute taken from Redis' TIME,
the depth sampled in the same call). So the hot path spends no round trip on charts; a
process killed outright loses at most its last second of counts. With `--processes` each
forked job process records and flushes its own (the thread is started again after a fork).
"""

from __future__ import annotations

import bisect
import logging
import threading
import time

import redis

from worker.process_id import current_pid
from worker.queues import QueueKeys

log = logging.getLogger("clarity.series")

FLUSH_SECONDS = 1.0
IDLE_SAMPLE_SECONDS = 10.0  # an idle worker still samples the depth this often
RETENTION_SECONDS = 25 * 3600
WAIT_BUCKETS_MS = (5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 30_000, 60_000,
                   300_000)  # then +inf
OUTCOMES = {"completed": "completed", "failed": "failed", "retried": "retried"}


def series_base(prefix: str, queue: str) -> str:
    return f"{QueueKeys(prefix, queue).base}series:"


def series_key(prefix: str, queue: str, minute: int) -> str:
    return f"{series_base(prefix, queue)}{minute}"


def wait_bucket(seconds: float) -> int:
    return bisect.bisect_left(WAIT_BUCKETS_MS, max(0.0, seconds) * 1000)


# KEYS: waiting set of the queue. ARGV: series key base (ends with "series:"), ttl seconds,
# then field/increment pairs. Adds the increments to this minute's hash (Redis' clock),
# samples the waiting depth, refreshes the expiry. Returns the minute written.
FLUSH_SCRIPT = """
local t = redis.call('TIME')
local minute = math.floor(tonumber(t[1]) / 60)
local key = ARGV[1] .. minute
for i = 3, #ARGV, 2 do
  redis.call('HINCRBY', key, ARGV[i], ARGV[i + 1])
end
local depth = redis.call('ZCARD', KEYS[1])
redis.call('HSET', key, 'depth', depth)
local top = tonumber(redis.call('HGET', key, 'depth_max') or '-1')
if depth > top then redis.call('HSET', key, 'depth_max', depth) end
redis.call('EXPIRE', key, ARGV[2])
return minute
"""


class SeriesRecorder:
    """RuntimeEvents subscriber: counts in memory, flushes once a second."""

    def __init__(self, client: redis.Redis, prefix: str, queues, *,
                 flush_seconds: float = FLUSH_SECONDS):
        self.client = client
        self.prefix = prefix
        self.queues = list(queues)
        self.flush_seconds = flush_seconds
        self._script = client.register_script(FLUSH_SCRIPT)
        self._lock = threading.Lock()
        self._pending: dict[str, dict[str, int]] = {}
        self._pid: int | None = None
        self._stop = threading.Event()
        self._last_sample = 0.0

    # -- events (any process of the worker) ----------------------------------------------

    def job_finished(self, job, outcome: str, duration: float, wait: float) -> None:
        field = OUTCOMES.get(outcome, "other")
        with self._lock:
            counts = self._pending.setdefault(job.queue, {})
            counts[field] = counts.get(field, 0) + 1
            counts["dur_ms"] = counts.get("dur_ms", 0) + int(max(0.0, duration) * 1000)
            bucket = f"w{wait_bucket(wait)}"
            counts[bucket] = counts.get(bucket, 0) + 1
        self._ensure_thread()

    # -- flushing -----------------------------------------------------------------------

    def start(self) -> SeriesRecorder:
        self._ensure_thread()
        return self

    def stop(self) -> None:
        self._stop.set()
        self.flush()

    def _ensure_thread(self) -> None:
        pid = current_pid()
        if self._pid == pid:
            return
        with self._lock:
            if self._pid == pid:
                return
            if self._pid is not None:  # a forked child: the parent's counts are not ours
                self._pending = {}
                self._lock = threading.Lock()
            self._pid = pid
        threading.Thread(target=self._run, name="SeriesFlusher", daemon=True).start()

    def _run(self) -> None:
        while not self._stop.wait(self.flush_seconds):
            try:
                self.flush()
            except Exception:  # never let the flusher die: the next tick retries
                log.warning("series flush failed", exc_info=True)

    def flush(self) -> int:
        """Write what was counted since the last flush; returns the queues written."""
        with self._lock:
            pending, self._pending = self._pending, {}
        now = time.monotonic()
        sample = now - self._last_sample >= IDLE_SAMPLE_SECONDS
        queues = [q for q in self.queues if pending.get(q) or sample]
        if not queues:
            return 0
        try:
            pipe = self.client.pipeline(transaction=False)
            for queue in queues:
                args = [series_base(self.prefix, queue), RETENTION_SECONDS]
                for field, value in (pending.get(queue) or {}).items():
                    args += [field, value]
                self._script(keys=[QueueKeys(self.prefix, queue).waiting], args=args,
                             client=pipe)
            pipe.execute()
        except redis.RedisError as exc:
            # Counts of a Redis outage are put back and written with the next flush.
            with self._lock:
                for queue, counts in pending.items():
                    mine = self._pending.setdefault(queue, {})
                    for field, value in counts.items():
                        mine[field] = mine.get(field, 0) + value
            log.debug("series not flushed: %s", exc)
            return 0
        if sample:
            self._last_sample = now
        return len(queues)


def percentile_ms(buckets: list[int], q: float) -> float | None:
    """The q-quantile (0..1) of a WAIT_BUCKETS_MS histogram, interpolated inside its
    bucket (the +inf bucket answers its lower bound). None when the histogram is empty."""
    total = sum(buckets)
    if total <= 0:
        return None
    rank = q * total
    seen = 0
    for index, count in enumerate(buckets):
        if count and seen + count >= rank:
            low = WAIT_BUCKETS_MS[index - 1] if index > 0 else 0
            if index >= len(WAIT_BUCKETS_MS):
                return float(low)
            high = WAIT_BUCKETS_MS[index]
            return low + (high - low) * (rank - seen) / count
        seen += count
    return float(WAIT_BUCKETS_MS[-1])


def read_series(client: redis.Redis, prefix: str, queue: str, minutes: int,
                step: int = 1) -> dict:
    """The last `minutes` minutes of `queue` (Redis' clock), grouped by `step` minutes:
    per point the start time, completed/failed/retried per minute, mean running time,
    waiting depth (max) and pickup latency p50/p95 in ms. One pipelined round trip."""
    seconds, _ = client.time()
    now_minute = int(seconds) // 60
    first = now_minute - minutes + 1
    pipe = client.pipeline(transaction=False)
    for minute in range(first, now_minute + 1):
        pipe.hgetall(series_key(prefix, queue, minute))
    rows = pipe.execute()
    points = []
    for start in range(0, minutes, step):
        group = rows[start:start + step]
        merged: dict[str, int] = {}
        depth = None
        for row in group:
            for field, value in row.items():
                name = field.decode() if isinstance(field, bytes) else field
                if name in ("depth", "depth_max"):
                    continue
                merged[name] = merged.get(name, 0) + int(value)
            if row:
                top = row.get(b"depth_max", row.get("depth_max"))
                if top is not None:
                    depth = max(depth or 0, int(top))
        buckets = [merged.get(f"w{i}", 0) for i in range(len(WAIT_BUCKETS_MS) + 1)]
        runs = sum(merged.get(k, 0) for k in ("completed", "failed", "retried", "other"))
        points.append({
            "at": (first + start) * 60,
            "completed": merged.get("completed", 0) / step,
            "failed": merged.get("failed", 0) / step,
            "retried": merged.get("retried", 0) / step,
            "durationMs": round(merged["dur_ms"] / runs, 1) if runs else None,
            "depth": depth,
            "latencyP50Ms": _round(percentile_ms(buckets, 0.50)),
            "latencyP95Ms": _round(percentile_ms(buckets, 0.95)),
            "samples": any(group),
        })
    return {"queue": queue, "stepMinutes": step, "points": points}


def _round(value):
    return None if value is None else round(value, 1)
