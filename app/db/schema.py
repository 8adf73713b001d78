"""The app database's tables (SQLAlchemy Core).

One definition for SQLite (the embedded default) and PostgreSQL (production). Times are
stored in UTC and always come back timezone-aware (`UTCDateTime`); money and quantities
are `Numeric`. Every table a handler writes has a natural unique key, so that a handler
re-run after a redelivery updates rows instead of adding them.

The Alembic migrations in `app/db/migrations/versions/` create these tables; change
both together (`tests/handlers/test_cleanup_and_db.py` checks that they agree).
"""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)


class UTCDateTime(TypeDecorator):
    """A timestamp stored as UTC and returned timezone-aware on every backend.

    SQLite has no time zones, so values are stored naive (in UTC) there; PostgreSQL
    stores `timestamptz`. Naive values handed in are taken to be UTC already.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        value = value.astimezone(dt.UTC)
        if dialect.name == "sqlite":
            value = value.replace(tzinfo=None)
        return value

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


MONEY = sa.Numeric(20, 4)
QUANTITY = sa.Numeric(24, 8)
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")  # SQLite: a rowid alias
JSON = sa.JSON().with_variant(JSONB(), "postgresql")


def _created():
    return sa.Column("created_at", UTCDateTime(), nullable=False, default=utcnow)


def _updated():
    return sa.Column("updated_at", UTCDateTime(), nullable=False, default=utcnow)


linked_accounts = sa.Table(
    "linked_accounts", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("user_id", sa.BigInteger, nullable=False),
    sa.Column("provider", sa.String(40), nullable=False, server_default="yodlee"),
    sa.Column("provider_account_id", sa.String(100), nullable=False),
    sa.Column("name", sa.String(200)),
    sa.Column("account_type", sa.String(60)),
    sa.Column("institution", sa.String(200)),
    sa.Column("currency", sa.String(3)),
    sa.Column("balance", MONEY),
    sa.Column("status", sa.String(40)),
    # The provider data (holdings, transactions) last applied, digested: a repeat sync of
    # unchanged data skips the account (app.jobs.sync.apply_account).
    sa.Column("data_digest", sa.String(64)),
    _created(),
    _updated(),
    sa.UniqueConstraint("user_id", "provider", "provider_account_id"),
)

holdings = sa.Table(
    "holdings", metadata,
    sa.Column("id", BIG_ID, primary_key=True),
    sa.Column("account_id", sa.Integer, sa.ForeignKey("linked_accounts.id", ondelete="CASCADE"),
              nullable=False),
    sa.Column("provider_holding_id", sa.String(100), nullable=False),
    sa.Column("symbol", sa.String(32)),
    sa.Column("description", sa.String(300)),
    sa.Column("quantity", QUANTITY),
    sa.Column("price", QUANTITY),
    sa.Column("value", MONEY),
    sa.Column("cost_basis", MONEY),
    sa.Column("currency", sa.String(3)),
    sa.Column("annual_dividend_per_share", QUANTITY),
    _updated(),
    sa.UniqueConstraint("account_id", "provider_holding_id"),
)

transactions = sa.Table(
    "transactions", metadata,
    sa.Column("id", BIG_ID, primary_key=True),
    sa.Column("account_id", sa.Integer, sa.ForeignKey("linked_accounts.id", ondelete="CASCADE"),
              nullable=False),
    sa.Column("provider_transaction_id", sa.String(100), nullable=False),
    sa.Column("posted_date", sa.Date, nullable=False),
    sa.Column("amount", MONEY, nullable=False),
    sa.Column("currency", sa.String(3)),
    sa.Column("category", sa.String(60)),
    sa.Column("description", sa.String(300)),
    sa.Column("symbol", sa.String(32)),
    _updated(),
    sa.UniqueConstraint("account_id", "provider_transaction_id"),
    sa.Index("ix_transactions_account_id_posted_date", "account_id", "posted_date"),
)

portfolio_snapshots = sa.Table(
    "portfolio_snapshots", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("user_id", sa.BigInteger, nullable=False),
    sa.Column("snapshot_date", sa.Date, nullable=False),
    sa.Column("total_value", MONEY, nullable=False),
    sa.Column("annual_dividend_income", MONEY, nullable=False),
    sa.Column("monthly_dividend_income", MONEY, nullable=False),
    sa.Column("trailing_12m_dividends", MONEY, nullable=False),
    sa.Column("accounts_count", sa.Integer, nullable=False),
    sa.Column("holdings_count", sa.Integer, nullable=False),
    sa.Column("computed_at", UTCDateTime(), nullable=False, default=utcnow),
    sa.UniqueConstraint("user_id", "snapshot_date"),
)

# One row per user: when the last sync ran and succeeded. Kept out of linked_accounts so
# that a repeated sync with unchanged data leaves every data row untouched.
sync_state = sa.Table(
    "sync_state", metadata,
    sa.Column("user_id", sa.BigInteger, primary_key=True),
    sa.Column("last_attempt_at", UTCDateTime()),
    sa.Column("last_success_at", UTCDateTime()),
    sa.Column("last_status", sa.String(20)),
    sa.Index("ix_sync_state_last_success_at", "last_success_at"),
)

sync_log = sa.Table(
    "sync_log", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("user_id", sa.BigInteger, nullable=False),
    sa.Column("sync_type", sa.String(20), nullable=False),
    sa.Column("status", sa.String(20), nullable=False),  # running | success | failed
    sa.Column("accounts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("holdings", sa.Integer, nullable=False, server_default="0"),
    sa.Column("transactions", sa.Integer, nullable=False, server_default="0"),
    sa.Column("rows_changed", sa.Integer, nullable=False, server_default="0"),
    sa.Column("duration_ms", sa.Integer),
    sa.Column("error", sa.Text),
    _created(),
    sa.Column("finished_at", UTCDateTime()),
    sa.Index("ix_sync_log_status_created_at", "status", "created_at"),
    sa.Index("ix_sync_log_user_id_created_at", "user_id", "created_at"),
)

email_log = sa.Table(
    "email_log", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("idempotency_key", sa.String(200), nullable=False, unique=True),
    sa.Column("template", sa.String(60), nullable=False),
    sa.Column("to_address", sa.String(320), nullable=False),
    sa.Column("subject", sa.String(300)),
    # pending | sending | sent | retry | failed
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("message_id", sa.String(300)),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("error", sa.Text),
    _created(),
    sa.Column("claimed_at", UTCDateTime()),
    sa.Column("sent_at", UTCDateTime()),
    sa.Index("ix_email_log_status_created_at", "status", "created_at"),
)

# The legacy scheduler's table: the migration router writes here when Redis is down and the
# legacy poller drains it.
queued_sync = sa.Table(
    "queued_sync", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("user_id", sa.BigInteger, nullable=False),
    sa.Column("sync_type", sa.String(20), nullable=False, server_default="SCHEDULED"),
    sa.Column("priority", sa.Integer, nullable=False, server_default="3"),
    sa.Column("payload", JSON),
    # pending | processing | done | failed, and for the migration: migrating | moved
    sa.Column("status", sa.String(20), nullable=False, server_default="pending"),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("last_error", sa.Text),
    sa.Column("scheduled_at", UTCDateTime(), nullable=False, default=utcnow),
    _created(),
    _updated(),
    # Added by the migration (revision 0002_queued_sync_routing, app.migration owns them):
    # the job a row stands for (NULL queue/task: the legacy sync, "sync"/"sync_user"), its
    # id and idempotency key (shared with the queue, so a row is never run twice), why it is
    # here (NULL/legacy, routed, fallback, fallback_unsure) and who holds it until when.
    sa.Column("queue", sa.String(20)),
    sa.Column("task", sa.String(100)),
    sa.Column("job_id", sa.String(64)),
    sa.Column("idempotency_key", sa.String(200), unique=True),
    sa.Column("origin", sa.String(20)),
    sa.Column("claimed_by", sa.String(200)),
    sa.Column("claimed_until", UTCDateTime()),
    sa.Index("ix_queued_sync_scheduled_at", "scheduled_at"),
    sa.Index("ix_queued_sync_status_updated_at", "status", "updated_at"),
    sa.Index("ix_queued_sync_status_scheduled_at", "status", "scheduled_at"),
)

notifications = sa.Table(
    "notifications", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("user_id", sa.BigInteger, nullable=False),
    sa.Column("kind", sa.String(60), nullable=False),
    sa.Column("dedupe_key", sa.String(200), nullable=False, unique=True),
    sa.Column("title", sa.String(200), nullable=False),
    sa.Column("body", sa.Text),
    sa.Column("data", JSON),
    sa.Column("emailed", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("read_at", UTCDateTime()),
    _created(),
    sa.Index("ix_notifications_user_id_created_at", "user_id", "created_at"),
)

webhook_events = sa.Table(
    "webhook_events", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("provider", sa.String(40), nullable=False),
    sa.Column("event_id", sa.String(200), nullable=False),
    sa.Column("event_type", sa.String(100), nullable=False),
    sa.Column("user_id", sa.BigInteger),
    sa.Column("payload", JSON),
    sa.Column("status", sa.String(20), nullable=False),  # received | processed
    sa.Column("routed_to", sa.String(200)),
    sa.Column("signed_at", UTCDateTime()),
    sa.Column("received_at", UTCDateTime(), nullable=False, default=utcnow),
    sa.Column("processed_at", UTCDateTime()),
    sa.UniqueConstraint("provider", "event_id"),
    sa.Index("ix_webhook_events_received_at", "received_at"),
)

# Side effects recorded against an idempotency key, so that a redelivered job can tell
# that its effect already happened (and what it returned).
side_effects = sa.Table(
    "side_effects", metadata,
    sa.Column("key", sa.String(200), primary_key=True),
    sa.Column("kind", sa.String(60), nullable=False),
    sa.Column("result", JSON),
    _created(),
    sa.Index("ix_side_effects_created_at", "created_at"),
)

# Lease locks for work that must never run twice at once (cleanup).
job_locks = sa.Table(
    "job_locks", metadata,
    sa.Column("name", sa.String(100), primary_key=True),
    sa.Column("holder", sa.String(200), nullable=False),
    sa.Column("expires_at", UTCDateTime(), nullable=False),
)

ALL_TABLES = [t.name for t in metadata.sorted_tables]
