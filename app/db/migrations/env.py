"""Alembic environment: runs on the connection `app.db.migrate` hands over."""

from __future__ import annotations

from alembic import context

from app.db.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - always called through app.db.migrate
    raise RuntimeError("run migrations with `clarity db upgrade` (app.db.migrate)")

context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",  # SQLite cannot ALTER most things
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
