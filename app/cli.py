"""The `clarity` console script: one click group, every command listed here.

The queue core's commands come from `worker.cli`, the app's from their own modules; all of
them share the error policy of `ClarityCLI` (configuration, Redis and database failures end
as one clear line, never a traceback).
"""

from __future__ import annotations

import functools

import click

from app.admin.cli import admin
from app.db.cli import db
from app.db.errors import explain_database_error
from app.devstack.up import up
from app.doctor import doctor
from app.migration.cli import legacy, migrate
from worker import cli as core


class ClarityCLI(core.ClarityGroup):
    def explain(self, exc: Exception) -> str | None:
        return explain_database_error(exc) or super().explain(exc)


@click.group(cls=ClarityCLI,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="clarity-jobs", prog_name="clarity")
def main():
    """Clarity job system: workers, queues and operations for Income Clarity.

    Configuration comes from the environment (and an optional .env file): REDIS_URL or
    REDIS_HOST/REDIS_PORT/REDIS_PASSWORD/REDIS_DB, JOB_SIGNING_SECRET, WORKER_* and more;
    see the README's configuration table.
    """


# The app's mutations, audited like the queue commands' and the admin API's (worker.audit):
# a log line, and the dashboard's Recent actions when Redis answers.
AUDITED = {db: ("upgrade", "downgrade"), migrate: ("run", "rollback", "resume", "set-mode")}


def _audit(group: click.Group, name: str) -> None:
    command = group.commands[name]
    original = command.callback
    action = f"{group.name} {name}"

    @functools.wraps(original)
    def callback(*args, **kwargs):
        from worker.audit import cli_audit

        target = {k: str(kwargs[k]) for k in ("mode", "revision") if kwargs.get(k)}
        try:
            value = original(*args, **kwargs)
        except (click.exceptions.Exit, click.Abort):
            raise
        except Exception as exc:
            cli_audit(action, "error", status=500, target=target, detail=type(exc).__name__)
            raise
        cli_audit(action, "ok", status=200, target=target)
        return value

    command.callback = callback


for group, names in AUDITED.items():
    for name in names:
        _audit(group, name)

for command in (*core.COMMANDS, db, migrate, legacy, admin, up, doctor):
    main.add_command(command)

__all__ = ["main"]
