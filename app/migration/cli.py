"""`clarity migrate ...` and `clarity legacy ...`: the migration's operator commands."""

from __future__ import annotations

import json
import logging
import signal
import threading

import click

from app.migration.config import get_migration_settings
from worker.settings import get_settings


def _store():
    from app.db.engine import get_engine
    from app.migration.legacy import LegacyStore

    return LegacyStore(get_engine())


def _client():
    from worker.connections import redis_client

    return redis_client(get_settings())


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s %(message)s")


@click.group()
def migrate():
    """Move background work from the legacy scheduler to the queues (see docs/migration.md).

    Routing comes from ENABLE_QUEUE, MIGRATION_MODE (testing | gradual | immediate),
    MIGRATION_PERCENTAGE and MIGRATE_*_PRIORITY; `rollback` overrides them at runtime.
    """


@migrate.command()
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
def status(as_json):
    """Routing mode, jobs routed each way, legacy backlog and rows moved."""
    from app.migration.stats import current_migration_stats

    stats = current_migration_stats()
    if as_json:
        click.echo(json.dumps(stats, indent=2, default=str))
        return
    click.echo(f"mode:        {stats['mode']} (from {stats['modeSource']}; queue enabled "
               f"{stats['enabled']}; testing share {stats['configuredPercentage']:g} %)")
    p = stats["priorities"]
    click.echo(f"gradual:     high {p['high']}, medium {p['medium']}, low {p['low']}; "
               f"fallback to legacy {stats['fallbackToLegacy']}")
    r = stats["routed"]
    click.echo(f"routed:      queue {r['queue']}, legacy {r['legacy']}, fallback "
               f"{r['fallback']} ({r['scope']}); {stats['migrationPercentage']:g} % to queues")
    table = stats.get("legacy") or {}
    if "error" in table:
        click.echo(f"legacy table: unavailable ({table['error']})")
    else:
        click.echo(f"legacy:      backlog {stats['legacyBacklog']}, moved {stats['moved']}, "
                   f"by status {json.dumps(table.get('status', {}), sort_keys=True)}")


@migrate.command()
@click.option("--dry-run", is_flag=True, help="Only count what would move.")
@click.option("--batch-size", type=click.IntRange(1, 5000), default=200, show_default=True,
              help="Rows claimed and enqueued per round trip.")
@click.option("--claim-seconds", type=click.FloatRange(0.1, 86_400), default=None,
              help="How long a claim holds before another migrator may take the rows over "
                   "[default: LEGACY_CLAIM_SECONDS].")
@click.option("--name", default=None, help="This migrator's name in claims and logs.")
@click.option("--force", is_flag=True,
              help="Run even if MIGRATE_EXISTING_JOBS is off.")
@click.option("--no-wait", is_flag=True,
              help="Do not wait for rows other migrators hold.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def run(dry_run, batch_size, claim_seconds, name, force, no_wait, quiet):
    """Move pending legacy rows into the queues, each exactly once (resumable)."""
    from app.migration.migrator import Migrator

    msettings = get_migration_settings()
    migrator = Migrator(_store(), get_settings(), name=name, batch_size=batch_size,
                        claim_seconds=claim_seconds or msettings.legacy_claim_seconds)
    plan = migrator.plan()
    if dry_run:
        click.echo(f"would move {plan.pending} pending rows: by queue "
                   f"{json.dumps(plan.by_queue, sort_keys=True)}, by priority "
                   f"{json.dumps({str(k): v for k, v in sorted(plan.by_priority.items())})}"
                   f"; {plan.claimed_elsewhere} rows are being moved by another migrator")
        return
    if not (msettings.migrate_existing_jobs or force):
        raise click.ClickException("MIGRATE_EXISTING_JOBS is off: set it (or pass --force) "
                                   "to move legacy rows into the queues")
    if quiet:
        report = migrator.run(wait_for_others=not no_wait)
    else:
        with click.progressbar(length=plan.pending + plan.claimed_elsewhere,
                               label="moving legacy rows", show_pos=True) as bar:
            report = migrator.run(progress=bar.update, wait_for_others=not no_wait)
    click.echo(f"moved {report.moved} rows ({report.already_queued} were already queued by "
               f"an interrupted run) in {report.seconds:.1f}s; by queue "
               f"{json.dumps(report.by_queue, sort_keys=True)}")
    if report.skipped:
        click.echo(f"left {report.skipped} rows to the legacy poller:", err=True)
        for row_id, why in report.skipped_rows[:20]:
            click.echo(f"  row {row_id}: {why}", err=True)


@migrate.command()
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def rollback(yes):
    """Send every new job to the legacy table, in every producer within seconds.

    Jobs already queued stay and drain through the workers; keep them running. Undo
    with `clarity migrate resume`.
    """
    from app.migration.router import ROLLBACK_MODE, write_override

    if not yes:
        click.confirm("Route all new jobs to the legacy scheduler?", abort=True)
    settings = get_settings()
    write_override(_client(), settings.redis_key_prefix, ROLLBACK_MODE, by="rollback")
    ttl = get_migration_settings().migration_override_ttl
    click.echo(f"rolled back: new jobs go to the legacy table (producers notice within "
               f"{ttl:g}s). Queued jobs keep draining; keep `clarity legacy run` running.")


@migrate.command(name="set-mode")
@click.argument("mode", type=click.Choice(["testing", "gradual", "immediate", "legacy"]))
@click.option("--percentage", type=click.FloatRange(0, 100), default=None,
              help="testing mode: share of users on the queues.")
def set_mode(mode, percentage):
    """Override MIGRATION_MODE at runtime for every producer (stored in Redis)."""
    from app.migration.router import write_override

    write_override(_client(), get_settings().redis_key_prefix, mode, percentage, by="set-mode")
    click.echo(f"routing mode set to {mode}" +
               (f" ({percentage:g} %)" if percentage is not None else ""))


@migrate.command()
def resume():
    """Remove the runtime override: routing follows the environment's settings again."""
    from app.migration.router import clear_override

    removed = clear_override(_client(), get_settings().redis_key_prefix)
    click.echo("override removed: routing follows ENABLE_QUEUE / MIGRATION_MODE again"
               if removed else "no override was set")


@click.group()
def legacy():
    """The legacy scheduler: drain the `queued_sync` table in-process."""


@legacy.command(name="run")
@click.option("--batch-size", type=click.IntRange(1, 1000), default=50, show_default=True)
@click.option("-c", "--concurrency", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Rows run at once, in threads.")
@click.option("--claim-seconds", type=click.FloatRange(0.1, 86_400), default=None,
              help="Claim length; above the longest job [default: LEGACY_CLAIM_SECONDS].")
@click.option("--idle-seconds", type=click.FloatRange(0.01, 60), default=1.0,
              show_default=True, help="Sleep between polls when there is nothing to do.")
@click.option("--name", default=None, help="This poller's name in claims and logs.")
@click.option("--once", is_flag=True, help="One batch, then exit.")
def legacy_run(batch_size, concurrency, claim_seconds, idle_seconds, name, once):
    """Claim due rows and run their handlers until SIGINT/SIGTERM."""
    from app.migration.poller import LegacyPoller

    settings = get_settings()
    _setup_logging(settings.log_level)
    poller = LegacyPoller(_store(), settings, name=name, batch_size=batch_size,
                          concurrency=concurrency,
                          claim_seconds=claim_seconds
                          or get_migration_settings().legacy_claim_seconds)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    totals = poller.run(stop, idle_seconds, max_rounds=1 if once else None)
    click.echo(f"done {totals.done}, failed {totals.failed}, retried {totals.retried}, "
               f"handed back to the queue {totals.requeued}")
