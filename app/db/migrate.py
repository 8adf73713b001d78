"""Alembic, configured in code so that migrations run from an installed wheel (no
alembic.ini, no working-directory assumptions): the scripts ship inside the package."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Engine

from app.db.engine import get_engine

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def alembic_config(engine: Engine | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("version_table", "alembic_version")
    config.attributes["engine"] = engine
    return config


def _run(engine: Engine | None, fn, *args, **kwargs):
    engine = engine or get_engine()
    config = alembic_config(engine)
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        return fn(config, *args, **kwargs)


def upgrade(revision: str = "head", engine: Engine | None = None) -> None:
    _run(engine, command.upgrade, revision)


def downgrade(revision: str, engine: Engine | None = None) -> None:
    _run(engine, command.downgrade, revision)


def current_revision(engine: Engine | None = None) -> str | None:
    engine = engine or get_engine()
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_revision() -> str:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def revision(message: str, autogenerate: bool = True, engine: Engine | None = None) -> None:
    """Write a new migration script (developers only: needs a database at head)."""
    _run(engine, command.revision, message=message, autogenerate=autogenerate)
