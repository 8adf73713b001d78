"""queued_sync: columns for the migration router, the fallback and the migrator.

Revision ID: 0002_queued_sync_routing
Revises: 0001
Create Date: 2026-11-28 10:00:00

Owned by app.migration (issue 6). Each column is nullable so that rows the legacy
scheduler wrote before this revision stay valid: NULL queue/task mean the legacy sync
("sync"/"sync_user"), NULL origin means "legacy".
"""

import sqlalchemy as sa
from alembic import op

TIMESTAMP = sa.DateTime(timezone=True)

revision = "0002_queued_sync_routing"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("queued_sync", schema=None) as batch_op:
        batch_op.add_column(sa.Column("queue", sa.String(length=20), nullable=True))
        batch_op.add_column(sa.Column("task", sa.String(length=100), nullable=True))
        batch_op.add_column(sa.Column("job_id", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("idempotency_key", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("origin", sa.String(length=20), nullable=True))
        batch_op.add_column(sa.Column("claimed_by", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("claimed_until", TIMESTAMP, nullable=True))
        batch_op.create_unique_constraint(op.f("uq_queued_sync_idempotency_key"),
                                          ["idempotency_key"])
        batch_op.create_index("ix_queued_sync_status_scheduled_at", ["status", "scheduled_at"],
                              unique=False)


def downgrade() -> None:
    with op.batch_alter_table("queued_sync", schema=None) as batch_op:
        batch_op.drop_index("ix_queued_sync_status_scheduled_at")
        batch_op.drop_constraint(op.f("uq_queued_sync_idempotency_key"), type_="unique")
        for column in ("claimed_until", "claimed_by", "origin", "idempotency_key", "job_id",
                       "task", "queue"):
            batch_op.drop_column(column)
