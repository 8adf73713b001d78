"""Prometheus metrics of a worker process (served on the health port's /metrics).

Two kinds, because of how the numbers are produced:

* Counted as jobs run (counters, histograms, the active-jobs gauge): prometheus-client
  metric objects updated by the runtime's events (`JobMetrics` subscribes to them). With ``--processes`` the jobs run
  in forked children, so these live in prometheus-client's multiprocess mode: every process
  writes its own mmap'd file under PROMETHEUS_MULTIPROC_DIR and a scrape adds them up. When
  the worker runs with processes and PROMETHEUS_MULTIPROC_DIR is not set, a private
  directory is created (and removed at exit). A directory given by the operator must belong
  to this one worker (systemd: its RuntimeDirectory); it is wiped at start, as
  client_python's multiprocess guide requires.
* Read at scrape time (queue depths, expired leases, Redis up and round trip, worker up and
  start time, last backup): a custom collector in the serving process. Queue gauges cost one
  pipelined round trip for all five queues (`QueueManager.counts_all()`) plus one PING per
  scrape, whatever the number of jobs.

Every worker reports all five queues' depths, so the series survive any one worker's death;
aggregate them with ``max by (queue, state, priority)``, never ``sum`` (see docs/metrics.md).
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

log = logging.getLogger("clarity.metrics")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
OWN_DIR_ENV = "CLARITY_METRICS_TMPDIR"  # marks a directory this worker created
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300,
                    600, 1800)
WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900,
                3600)
OUTCOME_COUNTERS = {"completed": "completed", "failed": "failed", "retried": "retried"}
PRIORITY_LABELS = ("critical", "high", "normal", "low", "other")


def prepare_multiprocess(processes: bool) -> str | None:
    """Choose the metrics mode before the first metric object is built.

    Returns the multiprocess directory in use, or None for single-process mode.
    """
    path = os.environ.get(MULTIPROC_ENV)
    if path:
        directory = Path(path)
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.glob("*.db"):  # files of a previous run would add up
            stale.unlink(missing_ok=True)
        if os.environ.get(OWN_DIR_ENV) == path:  # ours, inherited across a SIGHUP re-exec
            _remove_at_exit(path)
    elif processes:
        path = tempfile.mkdtemp(prefix="clarity-metrics-")
        os.environ[MULTIPROC_ENV] = os.environ[OWN_DIR_ENV] = path
        _remove_at_exit(path)
    else:
        return None
    # prometheus-client picks its value class when first imported; if something imported
    # it before the directory was known, pick again (metrics are only built after this).
    # Its values ask for the process id on every update to notice a fork; ours is cached
    # and renewed in a forked child (worker.process_id), one system call fewer each time.
    from prometheus_client import values

    from worker.process_id import current_pid

    values.ValueClass = values.MultiProcessValue(process_identifier=current_pid)
    return path


def _remove_at_exit(path: str) -> None:
    owner = os.getpid()  # forked job processes exit too; only the worker removes it
    atexit.register(lambda: os.getpid() == owner and shutil.rmtree(path, True))


class JobMetrics:
    """Metric objects following the runtime's events (in any process of this worker)."""

    def __init__(self, registry):
        from prometheus_client import Counter, Gauge, Histogram

        labels = ["queue", "task"]
        self._children: dict[tuple[str, str, str], tuple] = {}  # bounded like the labels
        self.completed = Counter("clarity_jobs_completed", "Jobs that completed successfully",
                                 labels, registry=registry)
        self.failed = Counter("clarity_jobs_failed", "Jobs that failed for good (moved to the "
                              "failed set)", labels, registry=registry)
        self.retried = Counter("clarity_jobs_retried", "Job attempts that failed and were "
                               "scheduled for a retry", labels, registry=registry)
        self.other = Counter("clarity_jobs_other_outcomes", "Job executions ending otherwise: "
                             "scheduled, interrupted (shutdown), expired, error (worker-side "
                             "failure; redelivered after the lease)",
                             [*labels, "outcome"], registry=registry)
        self.redelivered = Counter("clarity_jobs_redelivered", "Job executions that were a "
                                   "redelivery (delivery count > 1: an earlier worker died or "
                                   "hung)", labels, registry=registry)
        self.bad_messages = Counter("clarity_bad_messages", "Messages refused and parked in the "
                                    "failed set (bad signature or unreadable)",
                                    [*labels, "reason"], registry=registry)
        self.duration = Histogram("clarity_job_duration_seconds", "Time spent running a job",
                                  labels, buckets=DURATION_BUCKETS, registry=registry)
        self.wait = Histogram("clarity_job_wait_seconds", "Time from a job being ready "
                              "(enqueued, or due) to it starting", ["queue"],
                              buckets=WAIT_BUCKETS, registry=registry)
        self.active = Gauge("clarity_worker_active_jobs", "Jobs running in this worker now",
                            registry=registry, multiprocess_mode="livesum")
        self.reaped = Counter("clarity_leases_reaped", "Expired leases handled by the reaper: "
                              "requeued, or abandoned after too many deliveries",
                              ["queue", "outcome"], registry=registry)
        self.timed_out = Counter("clarity_jobs_timed_out", "Jobs that ran past their task "
                                 "timeout in a thread: lease taken back, retried or failed",
                                 ["queue", "task", "outcome"], registry=registry)
        self.keeper_errors = Counter("clarity_lease_keeper_errors", "Errors the lease keeper "
                                     "survived (renewal, heartbeat, timeouts)",
                                     ["queue", "error"], registry=registry)

    # -- event subscriber (worker.events.RuntimeEvents) ----------------------------------

    def job_started(self, job) -> None:
        self.active.inc()

    def job_finished(self, job, outcome: str, duration: float, wait: float) -> None:
        self.active.dec()
        # The labelled children of a (queue, task, outcome) are looked up once: `labels()`
        # takes a lock and builds a tuple, on every job otherwise.
        key = (job.queue, job.task, outcome)
        children = self._children.get(key)
        if children is None:
            counter = OUTCOME_COUNTERS.get(outcome)
            children = self._children[key] = (
                getattr(self, counter).labels(job.queue, job.task) if counter else
                self.other.labels(job.queue, job.task, outcome),
                self.duration.labels(job.queue, job.task), self.wait.labels(job.queue))
        count, duration_child, wait_child = children
        count.inc()
        if job.deliveries > 1:
            self.redelivered.labels(job.queue, job.task).inc()
        duration_child.observe(max(0.0, duration))
        wait_child.observe(max(0.0, wait))

    def bad_message(self, queue: str, task: str, reason: str) -> None:
        self.bad_messages.labels(queue, task or "?", reason.replace(" ", "_")).inc()

    def job_timed_out(self, job, retried: bool) -> None:
        self.timed_out.labels(job.queue, job.task, "retried" if retried else "failed").inc()

    def keeper_error(self, queue: str, error: str) -> None:
        self.keeper_errors.labels(queue, error).inc()

    def leases_reaped(self, queue: str, requeued: int, abandoned: int) -> None:
        if requeued:
            self.reaped.labels(queue, "requeued").inc(requeued)
        if abandoned:
            self.reaped.labels(queue, "abandoned").inc(abandoned)


class ScrapeCollector:
    """Gauges read when Prometheus scrapes: a fixed number of Redis calls per scrape."""

    def __init__(self, probe, state, backup_file: str | None = None):
        self.probe = probe  # worker.health.RedisProbe
        self.state = state
        self.backup_file = backup_file

    def describe(self):
        return []  # no up-front description: collect() touches Redis only when scraped

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily

        up = GaugeMetricFamily("clarity_worker_up", "1 while this worker's consumer loop runs")
        up.add_metric([], 1.0)
        yield up
        started = GaugeMetricFamily("clarity_worker_start_time_seconds",
                                    "Unix time this worker process started", unit="")
        started.add_metric([], self.state.started_at)
        yield started
        with self.state.lock:
            stuck_count = len(self.state.stuck)
        stuck = GaugeMetricFamily("clarity_worker_stuck_threads", "Threads still running a job "
                                  "past its task timeout (its lease was taken back)")
        stuck.add_metric([], stuck_count)
        yield stuck

        rtt = self.probe.ping()
        redis_up = GaugeMetricFamily("clarity_redis_up", "1 when Redis answered PING")
        redis_up.add_metric([], 1.0 if rtt is not None else 0.0)
        yield redis_up
        if rtt is not None:
            g = GaugeMetricFamily("clarity_redis_roundtrip_seconds",
                                  "Time of one PING round trip to Redis, at scrape")
            g.add_metric([], rtt)
            yield g
            counts = self.probe.counts()
            if counts is not None:
                yield from self._queue_families(counts)
            where = self.probe.topology()
            if where and "primary" in where:
                primary = GaugeMetricFamily("clarity_redis_primary", "1 for the Redis primary "
                                            "this worker uses (Sentinel's answer, or the one "
                                            "configured host)", labels=["address", "mode"])
                primary.add_metric([where["primary"], where["mode"]], 1.0)
                yield primary
                if where["mode"] == "sentinel":
                    replicas = GaugeMetricFamily("clarity_redis_replicas", "Replicas Sentinel "
                                                 "knows for the primary")
                    replicas.add_metric([], len(where.get("replicas", [])))
                    yield replicas

        yield from self._process_families()

        stamp = read_backup_timestamp(self.backup_file)
        if stamp is not None:
            g = GaugeMetricFamily("clarity_backup_last_success_timestamp_seconds",
                                  "Unix time of the last verified Redis backup (from "
                                  "BACKUP_TIMESTAMP_FILE)")
            g.add_metric([], stamp)
            yield g

    @staticmethod
    def _process_families():
        """CPU and memory of this worker: its own process and, with --processes, the job
        processes it forked. CPU is a counter over the worker's life: children that exited
        and were reaped are in the parent's children times, so it never goes down."""
        import psutil
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        me = psutil.Process()
        try:
            children = me.children(recursive=True)
        except psutil.Error:
            children = []
        own = me.cpu_times()
        cpu = own.user + own.system + own.children_user + own.children_system
        rss = me.memory_info().rss
        alive = 1
        for child in children:
            try:
                times = child.cpu_times()
                cpu += times.user + times.system
                rss += child.memory_info().rss
                alive += 1
            except psutil.Error:  # exited meanwhile
                continue
        c = CounterMetricFamily("clarity_worker_cpu_seconds", "CPU time (user + system) of "
                                "this worker and its job processes")
        c.add_metric([], cpu)
        yield c
        m = GaugeMetricFamily("clarity_worker_resident_memory_bytes", "Resident memory of "
                              "this worker and its job processes")
        m.add_metric([], rss)
        yield m
        n = GaugeMetricFamily("clarity_worker_processes", "Processes of this worker (1, plus "
                              "the job processes with --processes)")
        n.add_metric([], alive)
        yield n

    @staticmethod
    def _queue_families(counts: dict):
        from prometheus_client.core import GaugeMetricFamily

        jobs = GaugeMetricFamily("clarity_jobs", "Jobs by queue, state and priority (priority "
                                 "only for waiting jobs, else 'all')",
                                 labels=["queue", "state", "priority"])
        expired = GaugeMetricFamily("clarity_expired_leases", "Running jobs whose lease has "
                                    "expired and not been reaped yet", labels=["queue"])
        paused = GaugeMetricFamily("clarity_queue_paused", "1 when the queue is paused",
                                   labels=["queue"])
        for queue, c in counts.items():
            for priority in PRIORITY_LABELS:
                jobs.add_metric([queue, "waiting", priority],
                                c["waitingByPriority"].get(priority, 0))
            for state in ("delayed", "active", "failed"):
                jobs.add_metric([queue, state, "all"], c[state])
            expired.add_metric([queue], c["expiredLeases"])
            paused.add_metric([queue], 1.0 if c["paused"] else 0.0)
        yield jobs
        yield expired
        yield paused


def read_backup_timestamp(path: str | None) -> float | None:
    """The backup script's node_exporter textfile (or a file holding just the number)."""
    if not path:
        return None
    try:
        text = Path(path).read_text()
    except OSError:
        return None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            return float(line.split()[-1])
        except ValueError:
            continue
    return None


class WorkerMetrics:
    """Everything /metrics serves for one worker process (and its forked children)."""

    def __init__(self, state, probe, processes: bool = False,
                 backup_file: str | None = None):
        from prometheus_client import CollectorRegistry

        self.multiproc_dir = prepare_multiprocess(processes)
        # Job metrics go to a private registry in single-process mode (a test may build
        # several workers in one interpreter); in multiprocess mode they are read from files.
        self._own = CollectorRegistry(auto_describe=False)
        self.jobs = JobMetrics(self._own)
        self.scrape = ScrapeCollector(probe, state, backup_file)
        self.started = time.time()

    def registry(self):
        from prometheus_client import CollectorRegistry, multiprocess

        if self.multiproc_dir is None:
            registry = CollectorRegistry(auto_describe=False)
            registry.register(_Forward(self._own))
        else:
            registry = CollectorRegistry(auto_describe=False)
            multiprocess.MultiProcessCollector(registry, path=self.multiproc_dir)
        registry.register(self.scrape)
        return registry

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry()), CONTENT_TYPE_LATEST

    def totals(self) -> dict[str, float]:
        """Completed, failed, retried and active counts of this worker (all its processes)."""
        out = {"completed": 0.0, "failed": 0.0, "retried": 0.0, "active": 0.0}
        names = {"clarity_jobs_completed_total": "completed",
                 "clarity_jobs_failed_total": "failed",
                 "clarity_jobs_retried_total": "retried",
                 "clarity_worker_active_jobs": "active"}
        from prometheus_client import CollectorRegistry, multiprocess

        if self.multiproc_dir is None:
            families = self._own.collect()
        else:
            registry = CollectorRegistry(auto_describe=False)
            multiprocess.MultiProcessCollector(registry, path=self.multiproc_dir)
            families = registry.collect()
        for family in families:
            for sample in family.samples:
                key = names.get(sample.name)
                if key:
                    out[key] += sample.value
        return out


class _Forward:
    """Serve another registry's metrics from a per-scrape registry."""

    def __init__(self, registry):
        self.registry = registry

    def collect(self):
        return self.registry.collect()
