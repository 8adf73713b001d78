"""The queue core's commands (`worker`, `enqueue`, `stats`, `failed`, `queue`, `job`) and the
error policy every `clarity` command shares (`ClarityGroup`).

The console script itself is `app.cli:main`, which lists these beside the app's commands
(the worker package never imports `app`).
"""

from __future__ import annotations

import json
import sys
import time

import click
from redis.exceptions import AuthenticationError, ConnectionError, ResponseError, TimeoutError

from worker.connections import permission_denied, tls_failure
from worker.queues import QUEUE_NAMES
from worker.settings import SettingsError, get_settings

QUEUE = click.Choice(QUEUE_NAMES)


def explain_core_error(exc: Exception) -> str | None:
    """One clear line for a configuration or Redis failure; None for anything else."""
    if isinstance(exc, SettingsError):
        return str(exc)
    if isinstance(exc, AuthenticationError):
        return (f"Redis refused the password ({exc}): check REDIS_USERNAME and "
                "REDIS_PASSWORD, or REDIS_URL")
    if isinstance(exc, ResponseError) and permission_denied(exc):
        return (f"Redis user {_redis_user()} lacks permission for this ({exc}): see "
                "docs/deploy.md#redis-users for what each user may do")
    if isinstance(exc, ConnectionError | TimeoutError):
        try:
            settings = get_settings()
        except SettingsError:
            settings = None
        where = settings.redis_display() if settings else "the configured address"
        cause = tls_failure(exc, settings) if settings else None
        if cause:
            return (f"cannot reach Redis at {where}: {exc}. Likely cause: {cause}; "
                    "`clarity doctor` checks the setup.")
        return (f"cannot reach Redis at {where}: {exc}. Is redis-server running? Check "
                "REDIS_HOST/REDIS_PORT (or REDIS_URL); `clarity doctor` checks the setup.")
    if isinstance(exc, ResponseError):
        return f"Redis answered with an error: {exc}"
    return None


def _redis_user() -> str:
    try:
        return get_settings().redis_user()
    except SettingsError:
        return "(unknown)"


class ClarityGroup(click.Group):
    """A command group whose commands share one error policy: a failure that `explain`
    knows ends as one line on stderr and exit status 1, never a traceback. Applied at the
    root, it covers every subcommand and subgroup (they run inside the root's invoke)."""

    def explain(self, exc: Exception) -> str | None:
        return explain_core_error(exc)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as exc:
            message = self.explain(exc)
            if message is None:
                raise
            raise click.ClickException(message) from None


def _manager():
    from worker.management import QueueManager

    return QueueManager(get_settings())


def _audited(action: str, target: dict, run, result=lambda value: "ok"):
    """Run one mutation and audit it like the admin API's (worker.audit): a log line and
    the bounded Redis list the dashboard shows, `via` cli, `who` the OS user."""
    from worker.audit import cli_audit

    try:
        value = run(_manager())
    except (click.exceptions.Exit, click.Abort):
        raise
    except Exception as exc:
        cli_audit(action, "error", status=500, target=target, detail=type(exc).__name__)
        raise
    outcome = result(value)
    detail = f"count={value}" if isinstance(value, int) and not isinstance(value, bool) \
        else None
    cli_audit(action, outcome, status=200 if outcome == "ok" else 404, target=target,
              detail=detail)
    return value


def _echo_json(doc):
    click.echo(json.dumps(doc, indent=2, default=str))


@click.command()
@click.option("-q", "--queue", "queues", multiple=True, type=QUEUE,
              help="Queue to consume; repeat for several (default: WORKER_QUEUES, all five).")
@click.option("-c", "--concurrency", type=click.IntRange(1, 256), default=None,
              help="Worker threads (or processes) per queue [default: WORKER_CONCURRENCY, 4].")
@click.option("--name", default=None, help="Worker name in logs and heartbeats "
              "[default: WORKER_NAME, the host name].")
@click.option("--processes/--threads", default=None,
              help="Run jobs in forked processes instead of threads (one queue only).")
@click.option("--no-periodic", is_flag=True, help="Do not fire periodic tasks from this worker.")
@click.option("--log-format", type=click.Choice(["auto", "json", "text"]), default="auto",
              envvar="LOG_FORMAT", show_default=True,
              help="JSON lines (production) or text (terminal); auto picks by terminal.")
def worker(queues, concurrency, name, processes, no_periodic, log_format):
    """Run a worker consuming one or more queues until SIGINT/SIGTERM.

    \b
    Examples:
      clarity worker --queue sync --concurrency 4
      clarity worker -q email -q notifications --name mail-1

    SIGINT or SIGTERM stop gracefully: running jobs finish (up to SHUTDOWN_TIMEOUT) and
    leased jobs not yet started go back to the queue at once. SIGHUP restarts.
    """
    import os

    from worker.connections import redis_client
    from worker.consumer import ClarityRunner
    from worker.events import RuntimeEvents
    from worker.health import HealthService, RedisProbe, health_port, serve_health
    from worker.logs import configure_logging, set_worker_name
    from worker.metrics import WorkerMetrics
    from worker.series import SeriesRecorder

    settings = get_settings()
    queues = list(dict.fromkeys(queues or settings.queues))
    name = name or settings.worker_name
    configure_logging(settings.log_level, log_format)
    set_worker_name(name)
    processes = settings.worker_processes if processes is None else processes
    # Everything the worker runs with, built here in one place: metrics subscribe to the
    # runtime's events before any job runs or any job process forks.
    events = RuntimeEvents()
    try:
        runner = ClarityRunner(settings, queues, concurrency or settings.worker_concurrency, name,
                               processes=processes, periodic=not no_periodic, events=events)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    probe = RedisProbe(settings)
    metrics = WorkerMetrics(runner.state, probe, processes=processes,
                            backup_file=os.environ.get("BACKUP_TIMESTAMP_FILE") or None)
    events.subscribe(metrics.jobs)
    series = SeriesRecorder(redis_client(settings), settings.redis_key_prefix, queues).start()
    events.subscribe(series)
    serve_health(HealthService(settings, runner, queues, metrics=metrics, probe=probe),
                 health_port(settings, queues))
    code = runner.run()
    series.stop()
    sys.exit(code)


@click.command()
@click.argument("queue", type=QUEUE)
@click.argument("task")
@click.argument("payload", default="{}")
@click.option("-p", "--priority", default=None,
              help="LOW, NORMAL, HIGH, CRITICAL or 1..10 [default: the task's].")
@click.option("--delay", type=float, default=None, help="Run after this many seconds.")
@click.option("--at", "scheduled_at", default=None,
              help="Run at this ISO 8601 time with offset, e.g. 2026-12-01T09:00:00Z.")
@click.option("--idempotency-key", default=None,
              help="Same key again (within 7 days) returns the first job's id.")
@click.option("--wait", type=float, default=None, metavar="SECONDS",
              help="Wait for the job to finish; exit 1 if it failed or timed out.")
def enqueue(queue, task, payload, priority, delay, scheduled_at, idempotency_key, wait):
    """Enqueue TASK on QUEUE with a JSON PAYLOAD object.

    \b
    Example:
      clarity enqueue sync ping '{"echo": "hello"}' --wait 10
    """
    from worker.producer import JobError
    from worker.producer import enqueue as do_enqueue

    try:
        data = json.loads(payload)
    except ValueError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="PAYLOAD") from None
    try:
        job = do_enqueue(queue, task, data, priority=priority, delay=delay,
                         scheduled_at=scheduled_at, idempotency_key=idempotency_key)
    except JobError as exc:
        raise click.BadParameter(exc.reason, param_hint=exc.field) from None
    doc = {"id": job.id, "queue": job.queue, "task": job.task, "created": job.created}
    if wait is None:
        _echo_json(doc)
        return
    manager = _manager()
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        info = manager.get_job(queue, job.id)
        if info is None:
            doc["state"] = "completed"
            _echo_json(doc)
            return
        if info["state"] == "failed":
            doc.update(state="failed", error=info.get("error"), reason=info.get("reason"))
            _echo_json(doc)
            sys.exit(1)
        time.sleep(0.05)
    doc["state"] = (manager.get_job(queue, job.id) or {}).get("state", "completed")
    _echo_json(doc)
    if doc["state"] != "completed":
        click.echo(f"job did not finish within {wait:g}s", err=True)
        sys.exit(1)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def stats(as_json):
    """Show every queue's jobs by state and priority."""
    counts = _manager().counts_all()
    if as_json:
        _echo_json(counts)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Clarity queues")
    for col in ("queue", "waiting", "critical", "high", "normal", "low", "delayed", "active",
                "failed", "paused"):
        table.add_column(col, justify="left" if col == "queue" else "right")
    for queue, c in counts.items():
        p = c["waitingByPriority"]
        table.add_row(queue, str(c["waiting"]), str(p["critical"]), str(p["high"]),
                      str(p["normal"]), str(p["low"]), str(c["delayed"]), str(c["active"]),
                      str(c["failed"]), "yes" if c["paused"] else "")
    Console().print(table)


@click.group()
def failed():
    """Inspect and act on failed jobs."""


@failed.command("list")
@click.argument("queue", type=QUEUE)
@click.option("--limit", type=click.IntRange(1, 500), default=20, show_default=True)
@click.option("--offset", type=click.IntRange(0), default=0, show_default=True)
def failed_list(queue, limit, offset):
    """List failed jobs of QUEUE, newest first."""
    page = _manager().list_failed(queue, limit, offset)
    for job in page["jobs"]:
        click.echo(f"{job['id']}  {job['task']:<20} {job['lastFailedAt']}  "
                   f"[{job['reason']}] {job['errorType']}: {(job['error'] or '')[:80]}")
    click.echo(f"-- {len(page['jobs'])} of {page['total']} failed job(s)", err=True)


@failed.command("show")
@click.argument("queue", type=QUEUE)
@click.argument("job_id")
def failed_show(queue, job_id):
    """Show one job with its error and traceback."""
    job = _manager().get_job(queue, job_id)
    if job is None:
        raise click.ClickException(f"no job {job_id} on {queue}")
    _echo_json(job)


@failed.command("retry")
@click.argument("queue", type=QUEUE)
@click.argument("job_id", required=False)
@click.option("--all", "retry_all", is_flag=True, help="Retry every failed job of QUEUE.")
def failed_retry(queue, job_id, retry_all):
    """Move a failed job (or --all) back to the queue."""
    if not job_id and not retry_all:
        raise click.UsageError("give a JOB_ID or --all")
    moved = _audited("retry-failed" if retry_all else "retry-job",
                     {"queue": queue, "jobId": job_id},
                     lambda m: _retry_with_progress(m, queue, None if retry_all else job_id),
                     lambda n: "ok" if n or retry_all else "rejected")
    click.echo(f"{moved} job(s) back on {queue}")
    if job_id and not moved:
        sys.exit(1)


@failed.command("remove")
@click.argument("queue", type=QUEUE)
@click.argument("job_id")
def failed_remove(queue, job_id):
    """Remove one job that is not running."""
    if not _audited("remove-job", {"queue": queue, "jobId": job_id},
                    lambda m: m.remove_job(queue, job_id),
                    lambda removed: "ok" if removed else "rejected"):
        raise click.ClickException(f"no waiting, delayed or failed job {job_id} on {queue}")
    click.echo("removed")


@failed.command("clear")
@click.argument("queue", type=QUEUE)
@click.confirmation_option(prompt="Remove every failed job of this queue?")
def failed_clear(queue):
    """Remove every failed job of QUEUE."""
    removed = _audited("clear-queue", {"queue": queue, "jobState": "failed"},
                       lambda m: _clear_with_progress(m, queue, "failed"))
    click.echo(f"{removed} failed job(s) removed")


@click.group()
def queue():
    """Pause, resume or clear a queue."""


@queue.command("pause")
@click.argument("name", type=QUEUE)
def queue_pause(name):
    """Stop starting new jobs on NAME (running jobs finish)."""
    _audited("pause", {"queue": name}, lambda m: m.pause(name))
    click.echo(f"{name} paused")


@queue.command("resume")
@click.argument("name", type=QUEUE)
def queue_resume(name):
    """Resume a paused queue."""
    _audited("resume", {"queue": name}, lambda m: m.resume(name))
    click.echo(f"{name} resumed")


@queue.command("clear")
@click.argument("name", type=QUEUE)
@click.option("--state", type=click.Choice(["waiting", "delayed", "failed"]), required=True)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def queue_clear(name, state, yes):
    """Remove every job of NAME in STATE."""
    if not yes:
        click.confirm(f"Remove every {state} job of {name}?", abort=True)
    removed = _audited("clear-queue", {"queue": name, "jobState": state},
                       lambda m: _clear_with_progress(m, name, state))
    click.echo(f"{removed} job(s) removed")


BATCH = 1000


def _progress(total: int, label: str):
    """A progress bar on a terminal (rich), nothing otherwise; the caller prints the
    summary line either way."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    progress = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(),
                        disable=total < BATCH or not sys.stderr.isatty(), transient=True,
                        console=Console(stderr=True))
    return progress


def _retry_with_progress(manager, queue: str, job_id: str | None) -> int:
    if job_id is not None:
        return manager.retry_failed(queue, job_id)
    total = manager.counts(queue)["failed"]
    moved = 0
    with _progress(total, f"retrying failed jobs of {queue}") as progress:
        task = progress.add_task("retry", total=total)
        while True:
            n = manager.storage(queue).retry_failed(limit=BATCH)
            moved += n
            progress.update(task, completed=moved)
            if not n:
                return moved


def _clear_with_progress(manager, queue: str, state: str) -> int:
    total = manager.counts(queue)[state]
    removed = 0
    with _progress(total, f"removing {state} jobs of {queue}") as progress:
        task = progress.add_task("clear", total=total)
        while True:
            n = manager.storage(queue).remove(state, limit=BATCH)
            removed += n
            progress.update(task, completed=removed)
            if not n:
                return removed


@click.command()
@click.argument("job_id")
@click.option("--queue", type=QUEUE, default=None, help="Look only in this queue.")
def job(job_id, queue):
    """Look a job up by id (in every queue unless --queue)."""
    manager = _manager()
    info = manager.get_job(queue, job_id) if queue else manager.find_job(job_id)
    if info is None:
        raise click.ClickException(f"no job {job_id} (finished jobs are not kept)")
    _echo_json(info)


@click.command()
@click.option("--interval", type=click.FloatRange(0.2, 3600), default=2.0, show_default=True,
              help="Seconds between refreshes.")
@click.option("--once", is_flag=True, help="Print the view once and exit (no live display).")
def top(interval, once):
    """A live view of every queue: depths, done and failed per minute, pickup latency
    p50/p95 and the workers' heartbeats. Ctrl-C quits.

    \b
    Example:
      clarity top --interval 5
    """
    from redis.exceptions import RedisError
    from rich.console import Console
    from rich.live import Live

    from worker.top import collect, render

    manager = _manager()
    if once:
        Console().print(render(collect(manager)))
        return

    def view():
        try:
            return render(collect(manager))
        except RedisError as exc:  # keep showing; Redis may come back
            return render({"error": str(exc)})

    try:
        with Live(view(), refresh_per_second=4, screen=False) as live:
            while True:
                time.sleep(interval)
                live.update(view())
    except KeyboardInterrupt:
        pass


@click.group()
def signing():
    """Signing keys in use, and re-signing the backlog (rotation, docs/deploy.md)."""


@signing.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def signing_status(as_json):
    """How many jobs each signing key sealed, per queue (`current` marks JOB_SIGNING_SECRET)."""
    from worker.hueys import get_huey

    manager = _manager()
    current = get_huey(QUEUE_NAMES[0], manager.settings).serializer.current.kid.decode()
    doc = {"current": current, "queues": {q: manager.signing_keys(q) for q in QUEUE_NAMES}}
    if as_json:
        _echo_json(doc)
        return
    for q, counts in doc["queues"].items():
        shown = ", ".join(f"{kid}{' (current)' if kid == current else ''}: {n}"
                          for kid, n in sorted(counts.items())) or "no jobs"
        click.echo(f"{q:<14} {shown}")


@signing.command("resign")
def signing_resign():
    """Re-seal with JOB_SIGNING_SECRET every job sealed with a previous secret, so that the
    previous secrets can be dropped. Safe under load and to run again."""
    def resign_all(manager) -> int:
        total = 0
        for q in QUEUE_NAMES:
            n = manager.resign(q)
            total += n
            click.echo(f"{q:<14} {n} job(s) re-signed")
        return total

    total = _audited("signing resign", {}, resign_all)
    click.echo(f"{total} job(s) re-signed in all")


COMMANDS = (worker, enqueue, stats, failed, queue, job, signing, top)
