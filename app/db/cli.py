"""`clarity db ...`: the app database's migrations."""

from __future__ import annotations

import click


def _settings():
    from app.jobs.settings import get_handler_settings

    return get_handler_settings()  # a bad value: the root group's error policy says which


@click.group()
def db():
    """The app database (DATABASE_URL; default: SQLite in STATE_DIR)."""


@db.command()
@click.argument("revision", default="head")
def upgrade(revision):
    """Apply migrations up to REVISION (default: head). Safe to run on every deploy."""
    from app.db import migrate

    settings = _settings()
    migrate.upgrade(revision)
    click.echo(f"{settings.database_display()}: at revision {migrate.current_revision()}")


@db.command()
@click.argument("revision")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def downgrade(revision, yes):
    """Revert migrations down to REVISION ('base' drops every table: data is lost)."""
    from app.db import migrate

    settings = _settings()
    if not yes:
        click.confirm(f"Downgrade {settings.database_display()} to {revision}?", abort=True)
    migrate.downgrade(revision)
    click.echo(f"{settings.database_display()}: at revision {migrate.current_revision()}")


@db.command()
@click.option("--check", is_flag=True,
              help="Exit with status 1 unless the database is at the latest revision.")
def current(check):
    """Show the database's revision and the latest one this build ships."""
    from app.db import migrate

    settings = _settings()
    rev, head = migrate.current_revision(), migrate.head_revision()
    state = "up to date" if rev == head else "needs `clarity db upgrade`"
    click.echo(f"{settings.database_display()}: revision {rev or 'none'} (head {head}, {state})")
    if check and rev != head:
        raise SystemExit(1)
