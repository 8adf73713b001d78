"""linked_accounts.data_digest: a digest of the provider data last applied to the account.

Revision ID: 0003_account_data_digest
Revises: 0002_queued_sync_routing
Create Date: 2026-11-30 12:00:00

A repeat sync whose provider data for an account has the same digest skips that account's
holdings and transactions (app.jobs.sync.apply_account). NULL: never applied with a digest,
so the next sync compares every row, as before this revision.
"""

import sqlalchemy as sa
from alembic import op

revision = "0003_account_data_digest"
down_revision = "0002_queued_sync_routing"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("linked_accounts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("data_digest", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("linked_accounts", schema=None) as batch_op:
        batch_op.drop_column("data_digest")
