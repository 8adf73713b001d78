"""Initial schema: account data, logs, legacy queue table, notifications, webhooks.

Revision ID: 0001
Revises:
Create Date: 2026-11-28 01:06:15.628680
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

# Types frozen here rather than imported from app.db.schema: a migration must keep
# creating what it created the day it was written.
TIMESTAMP = sa.DateTime(timezone=True)  # UTC; schema.UTCDateTime adds the conversion
JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('email_log',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('idempotency_key', sa.String(length=200), nullable=False),
    sa.Column('template', sa.String(length=60), nullable=False),
    sa.Column('to_address', sa.String(length=320), nullable=False),
    sa.Column('subject', sa.String(length=300), nullable=True),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('message_id', sa.String(length=300), nullable=True),
    sa.Column('attempts', sa.Integer(), server_default='0', nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('created_at', TIMESTAMP, nullable=False),
    sa.Column('claimed_at', TIMESTAMP, nullable=True),
    sa.Column('sent_at', TIMESTAMP, nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_email_log')),
    sa.UniqueConstraint('idempotency_key', name=op.f('uq_email_log_idempotency_key'))
    )
    with op.batch_alter_table('email_log', schema=None) as batch_op:
        batch_op.create_index('ix_email_log_status_created_at', ['status', 'created_at'], unique=False)

    op.create_table('job_locks',
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('holder', sa.String(length=200), nullable=False),
    sa.Column('expires_at', TIMESTAMP, nullable=False),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_job_locks'))
    )
    op.create_table('linked_accounts',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('user_id', sa.BigInteger(), nullable=False),
    sa.Column('provider', sa.String(length=40), server_default='yodlee', nullable=False),
    sa.Column('provider_account_id', sa.String(length=100), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=True),
    sa.Column('account_type', sa.String(length=60), nullable=True),
    sa.Column('institution', sa.String(length=200), nullable=True),
    sa.Column('currency', sa.String(length=3), nullable=True),
    sa.Column('balance', sa.Numeric(precision=20, scale=4), nullable=True),
    sa.Column('status', sa.String(length=40), nullable=True),
    sa.Column('created_at', TIMESTAMP, nullable=False),
    sa.Column('updated_at', TIMESTAMP, nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_linked_accounts')),
    sa.UniqueConstraint('user_id', 'provider', 'provider_account_id', name=op.f('uq_linked_accounts_user_id_provider_provider_account_id'))
    )
    op.create_table('notifications',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('user_id', sa.BigInteger(), nullable=False),
    sa.Column('kind', sa.String(length=60), nullable=False),
    sa.Column('dedupe_key', sa.String(length=200), nullable=False),
    sa.Column('title', sa.String(length=200), nullable=False),
    sa.Column('body', sa.Text(), nullable=True),
    sa.Column('data', JSON, nullable=True),
    sa.Column('emailed', sa.Boolean(), server_default=sa.false(), nullable=False),
    sa.Column('read_at', TIMESTAMP, nullable=True),
    sa.Column('created_at', TIMESTAMP, nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_notifications')),
    sa.UniqueConstraint('dedupe_key', name=op.f('uq_notifications_dedupe_key'))
    )
    with op.batch_alter_table('notifications', schema=None) as batch_op:
        batch_op.create_index('ix_notifications_user_id_created_at', ['user_id', 'created_at'], unique=False)

    op.create_table('portfolio_snapshots',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('user_id', sa.BigInteger(), nullable=False),
    sa.Column('snapshot_date', sa.Date(), nullable=False),
    sa.Column('total_value', sa.Numeric(precision=20, scale=4), nullable=False),
    sa.Column('annual_dividend_income', sa.Numeric(precision=20, scale=4), nullable=False),
    sa.Column('monthly_dividend_income', sa.Numeric(precision=20, scale=4), nullable=False),
    sa.Column('trailing_12m_dividends', sa.Numeric(precision=20, scale=4), nullable=False),
    sa.Column('accounts_count', sa.Integer(), nullable=False),
    sa.Column('holdings_count', sa.Integer(), nullable=False),
    sa.Column('computed_at', TIMESTAMP, nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_portfolio_snapshots')),
    sa.UniqueConstraint('user_id', 'snapshot_date', name=op.f('uq_portfolio_snapshots_user_id_snapshot_date'))
    )
    op.create_table('queued_sync',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('user_id', sa.BigInteger(), nullable=False),
    sa.Column('sync_type', sa.String(length=20), server_default='SCHEDULED', nullable=False),
    sa.Column('priority', sa.Integer(), server_default='3', nullable=False),
    sa.Column('payload', JSON, nullable=True),
    sa.Column('status', sa.String(length=20), server_default='pending', nullable=False),
    sa.Column('attempts', sa.Integer(), server_default='0', nullable=False),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('scheduled_at', TIMESTAMP, nullable=False),
    sa.Column('created_at', TIMESTAMP, nullable=False),
    sa.Column('updated_at', TIMESTAMP, nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_queued_sync'))
    )
    with op.batch_alter_table('queued_sync', schema=None) as batch_op:
        batch_op.create_index('ix_queued_sync_scheduled_at', ['scheduled_at'], unique=False)
        batch_op.create_index('ix_queued_sync_status_updated_at', ['status', 'updated_at'], unique=False)

    op.create_table('side_effects',
    sa.Column('key', sa.String(length=200), nullable=False),
    sa.Column('kind', sa.String(length=60), nullable=False),
    sa.Column('result', JSON, nullable=True),
    sa.Column('created_at', TIMESTAMP, nullable=False),
    sa.PrimaryKeyConstraint('key', name=op.f('pk_side_effects'))
    )
    with op.batch_alter_table('side_effects', schema=None) as batch_op:
        batch_op.create_index('ix_side_effects_created_at', ['created_at'], unique=False)

    op.create_table('sync_log',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('user_id', sa.BigInteger(), nullable=False),
    sa.Column('sync_type', sa.String(length=20), nullable=False),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('accounts', sa.Integer(), server_default='0', nullable=False),
    sa.Column('holdings', sa.Integer(), server_default='0', nullable=False),
    sa.Column('transactions', sa.Integer(), server_default='0', nullable=False),
    sa.Column('rows_changed', sa.Integer(), server_default='0', nullable=False),
    sa.Column('duration_ms', sa.Integer(), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('created_at', TIMESTAMP, nullable=False),
    sa.Column('finished_at', TIMESTAMP, nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_sync_log'))
    )
    with op.batch_alter_table('sync_log', schema=None) as batch_op:
        batch_op.create_index('ix_sync_log_status_created_at', ['status', 'created_at'], unique=False)
        batch_op.create_index('ix_sync_log_user_id_created_at', ['user_id', 'created_at'], unique=False)

    op.create_table('sync_state',
    sa.Column('user_id', sa.BigInteger(), nullable=False),
    sa.Column('last_attempt_at', TIMESTAMP, nullable=True),
    sa.Column('last_success_at', TIMESTAMP, nullable=True),
    sa.Column('last_status', sa.String(length=20), nullable=True),
    sa.PrimaryKeyConstraint('user_id', name=op.f('pk_sync_state'))
    )
    with op.batch_alter_table('sync_state', schema=None) as batch_op:
        batch_op.create_index('ix_sync_state_last_success_at', ['last_success_at'], unique=False)

    op.create_table('webhook_events',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('provider', sa.String(length=40), nullable=False),
    sa.Column('event_id', sa.String(length=200), nullable=False),
    sa.Column('event_type', sa.String(length=100), nullable=False),
    sa.Column('user_id', sa.BigInteger(), nullable=True),
    sa.Column('payload', JSON, nullable=True),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('routed_to', sa.String(length=200), nullable=True),
    sa.Column('signed_at', TIMESTAMP, nullable=True),
    sa.Column('received_at', TIMESTAMP, nullable=False),
    sa.Column('processed_at', TIMESTAMP, nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_webhook_events')),
    sa.UniqueConstraint('provider', 'event_id', name=op.f('uq_webhook_events_provider_event_id'))
    )
    with op.batch_alter_table('webhook_events', schema=None) as batch_op:
        batch_op.create_index('ix_webhook_events_received_at', ['received_at'], unique=False)

    op.create_table('holdings',
    sa.Column('id', BIG_ID, nullable=False),
    sa.Column('account_id', sa.Integer(), nullable=False),
    sa.Column('provider_holding_id', sa.String(length=100), nullable=False),
    sa.Column('symbol', sa.String(length=32), nullable=True),
    sa.Column('description', sa.String(length=300), nullable=True),
    sa.Column('quantity', sa.Numeric(precision=24, scale=8), nullable=True),
    sa.Column('price', sa.Numeric(precision=24, scale=8), nullable=True),
    sa.Column('value', sa.Numeric(precision=20, scale=4), nullable=True),
    sa.Column('cost_basis', sa.Numeric(precision=20, scale=4), nullable=True),
    sa.Column('currency', sa.String(length=3), nullable=True),
    sa.Column('annual_dividend_per_share', sa.Numeric(precision=24, scale=8), nullable=True),
    sa.Column('updated_at', TIMESTAMP, nullable=False),
    sa.ForeignKeyConstraint(['account_id'], ['linked_accounts.id'], name=op.f('fk_holdings_account_id_linked_accounts'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_holdings')),
    sa.UniqueConstraint('account_id', 'provider_holding_id', name=op.f('uq_holdings_account_id_provider_holding_id'))
    )
    op.create_table('transactions',
    sa.Column('id', BIG_ID, nullable=False),
    sa.Column('account_id', sa.Integer(), nullable=False),
    sa.Column('provider_transaction_id', sa.String(length=100), nullable=False),
    sa.Column('posted_date', sa.Date(), nullable=False),
    sa.Column('amount', sa.Numeric(precision=20, scale=4), nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=True),
    sa.Column('category', sa.String(length=60), nullable=True),
    sa.Column('description', sa.String(length=300), nullable=True),
    sa.Column('symbol', sa.String(length=32), nullable=True),
    sa.Column('updated_at', TIMESTAMP, nullable=False),
    sa.ForeignKeyConstraint(['account_id'], ['linked_accounts.id'], name=op.f('fk_transactions_account_id_linked_accounts'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_transactions')),
    sa.UniqueConstraint('account_id', 'provider_transaction_id', name=op.f('uq_transactions_account_id_provider_transaction_id'))
    )
    with op.batch_alter_table('transactions', schema=None) as batch_op:
        batch_op.create_index('ix_transactions_account_id_posted_date', ['account_id', 'posted_date'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('transactions', schema=None) as batch_op:
        batch_op.drop_index('ix_transactions_account_id_posted_date')

    op.drop_table('transactions')
    op.drop_table('holdings')
    with op.batch_alter_table('webhook_events', schema=None) as batch_op:
        batch_op.drop_index('ix_webhook_events_received_at')

    op.drop_table('webhook_events')
    with op.batch_alter_table('sync_state', schema=None) as batch_op:
        batch_op.drop_index('ix_sync_state_last_success_at')

    op.drop_table('sync_state')
    with op.batch_alter_table('sync_log', schema=None) as batch_op:
        batch_op.drop_index('ix_sync_log_user_id_created_at')
        batch_op.drop_index('ix_sync_log_status_created_at')

    op.drop_table('sync_log')
    with op.batch_alter_table('side_effects', schema=None) as batch_op:
        batch_op.drop_index('ix_side_effects_created_at')

    op.drop_table('side_effects')
    with op.batch_alter_table('queued_sync', schema=None) as batch_op:
        batch_op.drop_index('ix_queued_sync_status_updated_at')
        batch_op.drop_index('ix_queued_sync_scheduled_at')

    op.drop_table('queued_sync')
    op.drop_table('portfolio_snapshots')
    with op.batch_alter_table('notifications', schema=None) as batch_op:
        batch_op.drop_index('ix_notifications_user_id_created_at')

    op.drop_table('notifications')
    op.drop_table('linked_accounts')
    op.drop_table('job_locks')
    with op.batch_alter_table('email_log', schema=None) as batch_op:
        batch_op.drop_index('ix_email_log_status_created_at')

    op.drop_table('email_log')
