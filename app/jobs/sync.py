"""Aggregator syncs: accounts, holdings and transactions into the app database, then the
user's portfolio snapshot and projected dividend income.

Redelivery: a sync is a pure function of the provider's data. Every row is upserted on
its natural key and only written when a value differs, so running the same sync twice
(a redelivered job, a retry after a crash half-way) changes nothing the second time.
Each account is applied in one transaction, so a crash leaves every account either as
before or fully synced.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal

import sqlalchemy as sa
from huey import crontab
from huey.exceptions import CancelExecution
from sqlalchemy.engine import Connection, Engine

from app.contracts import SyncType
from app.db.engine import dialect_insert, get_engine, upsert
from app.db.schema import (
    holdings,
    linked_accounts,
    portfolio_snapshots,
    sync_log,
    sync_state,
    transactions,
    utcnow,
)
from app.jobs.aggregator import AggregatorClient, AggregatorRejected, get_client
from app.jobs.settings import HandlerSettings, get_handler_settings
from worker.queues import Priority
from worker.registry import periodic_task, task

log = logging.getLogger("clarity.tasks.sync")

PROVIDER = "yodlee"
MONEY_PLACES = Decimal("0.0001")
QUANTITY_PLACES = Decimal("0.00000001")
FETCH_THREADS = 2


@dataclass
class SyncResult:
    user_id: int
    sync_type: str
    accounts: int = 0
    holdings: int = 0
    transactions: int = 0
    rows_changed: int = 0
    seconds: float = 0.0
    db_seconds: float = 0.0
    fetch_seconds: float = 0.0
    log_id: int | None = None
    snapshot: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"user_id": self.user_id, "sync_type": self.sync_type, "accounts": self.accounts,
                "holdings": self.holdings, "transactions": self.transactions,
                "rows_changed": self.rows_changed, "seconds": round(self.seconds, 3),
                "sync_log_id": self.log_id}


# -- producing ---------------------------------------------------------------------------

def enqueue_sync(user_id: int, sync_type: SyncType | str = SyncType.MANUAL, *,
                 idempotency_key: str | None = None, delay: float | None = None):
    """Enqueue a sync at its type's priority. Returns worker.producer.EnqueuedJob."""
    from worker.producer import enqueue

    sync_type = SyncType(sync_type)
    return enqueue("sync", "sync_user", {"user_id": int(user_id), "sync_type": sync_type.value},
                   priority=sync_type.priority, idempotency_key=idempotency_key, delay=delay)


# -- the handler -------------------------------------------------------------------------

@task("sync", name="sync_user", retries=5, retry_delay=5.0, retry_max_delay=600,
      priority=Priority.HIGH)
def sync_user(payload: dict) -> dict:
    """Sync one user's accounts from the aggregator and recompute their portfolio.

    payload: {"user_id": int, "sync_type": "MANUAL" | "SCHEDULED" | "WEBHOOK" | "INITIAL"}.

    Under redelivery: idempotent. Unchanged provider data writes nothing (upserts compare
    values first); each account commits on its own, so a re-run after a crash completes
    the rest. Every run, including a redelivered one, adds its own `sync_log` row.
    Transient provider trouble (5xx, timeouts, rate limits) retries with backoff; a
    provider 4xx or a bad payload fails at once with the provider's message.
    """
    try:
        user_id = int(payload["user_id"])
        sync_type = SyncType(str(payload.get("sync_type", SyncType.MANUAL.value)).upper())
    except (KeyError, TypeError, ValueError) as exc:
        log.error("sync_user: bad payload %r (%s); not retrying", payload, exc)
        raise CancelExecution(retry=False) from None
    try:
        return run_sync(user_id, sync_type).as_dict()
    except AggregatorRejected as exc:
        log.error("sync of user %s refused by the provider: %s; not retrying", user_id, exc)
        raise CancelExecution(retry=False) from None


def run_sync(user_id: int, sync_type: SyncType = SyncType.MANUAL, *,
             engine: Engine | None = None, client: AggregatorClient | None = None,
             settings: HandlerSettings | None = None, today: dt.date | None = None
             ) -> SyncResult:
    """The sync itself, without the queue. Raises on failure after logging it."""
    settings = settings or get_handler_settings()
    engine = engine or get_engine(settings)
    client = client or get_client()
    today = today or dt.date.today()
    days = (settings.sync_initial_transactions_days if sync_type is SyncType.INITIAL
            else settings.sync_transactions_days)
    from_date = today - dt.timedelta(days=days)
    result = SyncResult(user_id, sync_type.value)
    started = time.perf_counter()
    login = str(user_id)

    with engine.begin() as conn:
        result.log_id = conn.execute(sync_log.insert().values(
            user_id=user_id, sync_type=sync_type.value, status="running",
            created_at=utcnow())).inserted_primary_key[0]
        _record_state(conn, user_id, attempt=True)
    try:
        t0 = time.perf_counter()
        accounts = client.accounts(login)
        result.fetch_seconds += time.perf_counter() - t0
        # Fetch the next accounts while this one is written: network and database overlap.
        # A small pool: the provider rate-limits per user, and order is kept for the log.
        def fetch(account: dict):
            t = time.perf_counter()
            provider_id = str(account["id"])
            data = client.account_data(login, provider_id, from_date)
            return data, time.perf_counter() - t

        with ThreadPoolExecutor(max_workers=FETCH_THREADS,
                                thread_name_prefix="sync-fetch") as pool:
            futures = [pool.submit(fetch, account) for account in accounts]
            try:
                for account, future in zip(accounts, futures, strict=True):
                    (account_holdings, account_transactions, received), fetch_time = \
                        future.result()
                    result.fetch_seconds += fetch_time
                    t1 = time.perf_counter()
                    with engine.begin() as conn:
                        result.rows_changed += apply_account(
                            conn, user_id, account, account_holdings, account_transactions,
                            received=received)
                    result.db_seconds += time.perf_counter() - t1
                    result.accounts += 1
                    result.holdings += len(account_holdings)
                    result.transactions += len(account_transactions)
            finally:
                for future in futures:
                    future.cancel()
        t0 = time.perf_counter()
        with engine.begin() as conn:
            result.snapshot = update_portfolio(conn, user_id, today)
            result.seconds = time.perf_counter() - started
            _finish_log(conn, result, "success")
            _record_state(conn, user_id, success=True)
        result.db_seconds += time.perf_counter() - t0
    except Exception as exc:
        result.seconds = time.perf_counter() - started
        with engine.begin() as conn:
            _finish_log(conn, result, "failed", error=f"{type(exc).__name__}: {exc}"[:2000])
            _record_state(conn, user_id, failed=True)
        log.warning("sync of user %s (%s) failed after %.2fs: %s", user_id, sync_type.value,
                    result.seconds, exc)
        raise
    log.info("synced user %s (%s): %d accounts, %d holdings, %d transactions, %d rows "
             "changed in %.2fs", user_id, sync_type.value, result.accounts, result.holdings,
             result.transactions, result.rows_changed, result.seconds)
    return result


def _finish_log(conn: Connection, result: SyncResult, status: str, error: str | None = None):
    conn.execute(sync_log.update().where(sync_log.c.id == result.log_id).values(
        status=status, accounts=result.accounts, holdings=result.holdings,
        transactions=result.transactions, rows_changed=result.rows_changed,
        duration_ms=int(result.seconds * 1000), error=error, finished_at=utcnow()))


def _record_state(conn: Connection, user_id: int, *, attempt=False, success=False,
                  failed=False) -> None:
    now = utcnow()
    values = {"user_id": user_id}
    if attempt:
        values["last_attempt_at"] = now
    if success:
        values.update(last_success_at=now, last_status="success")
    if failed:
        values["last_status"] = "failed"
    stmt = dialect_insert(conn, sync_state).values(**values)
    update = {k: stmt.excluded[k] for k in values if k != "user_id"}
    conn.execute(stmt.on_conflict_do_update(index_elements=["user_id"], set_=update))


# -- applying provider data --------------------------------------------------------------

def _money(value) -> Decimal | None:
    if isinstance(value, dict):
        value = value.get("amount")
    if value is None or value == "":
        return None
    return Decimal(str(value)).quantize(MONEY_PLACES, rounding=ROUND_HALF_UP)


def _quantity(value) -> Decimal | None:
    if value is None or value == "":
        return None
    return Decimal(str(value)).quantize(QUANTITY_PLACES, rounding=ROUND_HALF_UP)


def _currency(*values) -> str | None:
    for value in values:
        if isinstance(value, dict) and value.get("currency"):
            return str(value["currency"])[:3]
    return None


def _text(value, limit: int) -> str | None:
    if isinstance(value, dict):  # Yodlee: description {"original": ..., "simple": ...}
        value = value.get("simple") or value.get("original")
    return None if value is None else str(value)[:limit]


def account_row(user_id: int, account: dict) -> dict:
    balance = account.get("balance")
    return {"user_id": user_id, "provider": PROVIDER,
            "provider_account_id": str(account["id"]),
            "name": _text(account.get("accountName"), 200),
            "account_type": _text(account.get("accountType"), 60),
            "institution": _text(account.get("providerName"), 200),
            "currency": _currency(balance), "balance": _money(balance),
            "status": _text(account.get("accountStatus"), 40)}


def holding_row(account_id: int, holding: dict) -> dict:
    return {"account_id": account_id, "provider_holding_id": str(holding["id"]),
            "symbol": _text(holding.get("symbol"), 32),
            "description": _text(holding.get("description"), 300),
            "quantity": _quantity(holding.get("quantity")),
            "price": _quantity((holding.get("price") or {}).get("amount")
                               if isinstance(holding.get("price"), dict)
                               else holding.get("price")),
            "value": _money(holding.get("value")),
            "cost_basis": _money(holding.get("costBasis")),
            "currency": _currency(holding.get("value"), holding.get("price")),
            "annual_dividend_per_share": _quantity(holding.get("annualDividendPerShare"))}


def transaction_row(account_id: int, txn: dict) -> dict:
    posted = txn.get("date") or txn.get("postDate") or txn.get("transactionDate")
    return {"account_id": account_id, "provider_transaction_id": str(txn["id"]),
            "posted_date": dt.date.fromisoformat(str(posted)[:10]),
            "amount": _money(txn.get("amount")) or Decimal("0.0000"),
            "currency": _currency(txn.get("amount")),
            "category": _text(txn.get("category"), 60),
            "description": _text(txn.get("description"), 300),
            "symbol": _text(txn.get("symbol"), 32)}


def apply_account(conn: Connection, user_id: int, account: dict, account_holdings: list[dict],
                  account_transactions: list[dict], received: str) -> int:
    """Upsert one account and its holdings and transactions; delete holdings the provider
    no longer reports (positions closed). Returns how many rows changed. Call inside one
    transaction. `received`: the client's digest of the pages as received
    (AggregatorClient.account_data): when it and the account row are what was applied last
    time, nothing is compared or written."""
    now = utcnow()
    row = account_row(user_id, account)
    digest = hashlib.blake2b(f"{ROW_MAPPING_VERSION}:{received}".encode(),
                             digest_size=32).hexdigest()
    this_account = sa.and_(linked_accounts.c.user_id == user_id,
                           linked_accounts.c.provider == PROVIDER,
                           linked_accounts.c.provider_account_id == row["provider_account_id"])
    stored = conn.execute(sa.select(linked_accounts.c.id, linked_accounts.c.data_digest,
                                    *[linked_accounts.c[c] for c in row])
                          .where(this_account)).one_or_none()
    if stored is not None and stored.data_digest == digest and all(
            stored._mapping[c] == v for c, v in row.items()):
        # Nothing new from the provider: not even the account row is written (an upsert
        # that changes nothing still locks the row, and the commit then waits for the WAL).
        return 0
    changed = upsert(conn, linked_accounts, [row],
                     key=["user_id", "provider", "provider_account_id"],
                     touch={"updated_at": now})
    if stored is None:  # a new account: its id comes from the insert
        account_id = conn.execute(sa.select(linked_accounts.c.id).where(this_account)).scalar_one()
    elif stored.data_digest == digest:
        # Only the account row changed; the pages are what was applied last time: nothing
        # to compare. Rows only this handler writes (cleanup never touches holdings or
        # transactions).
        return changed
    else:
        account_id = stored.id
    # Providers occasionally list an item twice across pages; the last copy wins.
    holding_rows = list({r["provider_holding_id"]: r for r in
                         (holding_row(account_id, h) for h in account_holdings)}.values())
    changed += upsert(conn, holdings, holding_rows, key=["account_id", "provider_holding_id"],
                      touch={"updated_at": now})
    seen = [r["provider_holding_id"] for r in holding_rows]
    gone = sa.delete(holdings).where(holdings.c.account_id == account_id)
    if seen:
        gone = gone.where(holdings.c.provider_holding_id.not_in(seen))
    changed += conn.execute(gone).rowcount or 0
    txn_rows = list({r["provider_transaction_id"]: r for r in
                     (transaction_row(account_id, t) for t in account_transactions)}.values())
    changed += upsert(conn, transactions, txn_rows,
                      key=["account_id", "provider_transaction_id"], touch={"updated_at": now})
    conn.execute(sa.update(linked_accounts).where(linked_accounts.c.id == account_id)
                 .values(data_digest=digest))
    return changed


# Part of every account's digest: raise it when the rows built from the same provider data
# change (a new column, another rounding), so that the next sync compares every account.
ROW_MAPPING_VERSION = 1


# -- portfolio ---------------------------------------------------------------------------

def _dec(value) -> Decimal:
    if value is None:
        return Decimal("0.0000")
    return Decimal(str(value)).quantize(MONEY_PLACES, rounding=ROUND_HALF_UP)


def update_portfolio(conn: Connection, user_id: int, today: dt.date | None = None) -> dict:
    """Recompute today's portfolio snapshot: total value, projected annual and monthly
    dividend income (quantity x annual dividend per share), trailing-12-month dividends
    received. Idempotent: rewrites the row only if a figure changed."""
    today = today or dt.date.today()
    accounts = sa.select(linked_accounts.c.id).where(linked_accounts.c.user_id == user_id)
    totals = conn.execute(
        sa.select(sa.func.count(holdings.c.id),
                  sa.func.sum(holdings.c.value),
                  sa.func.sum(holdings.c.quantity * holdings.c.annual_dividend_per_share))
        .where(holdings.c.account_id.in_(accounts.scalar_subquery()))).one()
    trailing = conn.execute(
        sa.select(sa.func.sum(transactions.c.amount)).where(
            transactions.c.account_id.in_(accounts.scalar_subquery()),
            sa.func.lower(transactions.c.category) == "dividend",
            transactions.c.posted_date > today - dt.timedelta(days=365))).scalar()
    accounts_count = conn.execute(
        sa.select(sa.func.count()).select_from(accounts.subquery())).scalar_one()
    annual = _dec(totals[2])
    row = {"user_id": user_id, "snapshot_date": today, "total_value": _dec(totals[1]),
           "annual_dividend_income": annual,
           "monthly_dividend_income": (annual / 12).quantize(MONEY_PLACES, ROUND_HALF_UP),
           "trailing_12m_dividends": _dec(trailing), "accounts_count": accounts_count,
           "holdings_count": totals[0]}
    upsert(conn, portfolio_snapshots, [row], key=["user_id", "snapshot_date"],
           touch={"computed_at": utcnow()})
    return {k: (str(v) if isinstance(v, Decimal | dt.date) else v) for k, v in row.items()}


# -- scheduled syncs ---------------------------------------------------------------------

def stale_users(conn: Connection, max_age: dt.timedelta, limit: int,
                now: dt.datetime | None = None) -> list[int]:
    """Users whose last successful sync is older than `max_age` (or who never had one),
    oldest first."""
    cutoff = (now or utcnow()) - max_age
    stmt = (sa.select(sync_state.c.user_id)
            .where(sa.or_(sync_state.c.last_success_at < cutoff,
                          sync_state.c.last_success_at.is_(None)))
            .order_by(sync_state.c.last_success_at.asc().nulls_first(), sync_state.c.user_id)
            .limit(limit))
    return [r[0] for r in conn.execute(stmt)]


def enqueue_stale_syncs(settings: HandlerSettings | None = None, engine: Engine | None = None,
                        now: dt.datetime | None = None) -> dict:
    """Enqueue SCHEDULED syncs for at most SYNC_STALE_BATCH_SIZE stale users. The
    idempotency key holds one slot per user per age window, so a user whose sync is
    still waiting in the queue is not enqueued again on the next tick."""
    from worker.producer import JobRequest, enqueue_many

    settings = settings or get_handler_settings()
    engine = engine or get_engine(settings)
    now = now or utcnow()
    max_age = dt.timedelta(hours=settings.sync_max_age_hours)
    with engine.connect() as conn:
        users = stale_users(conn, max_age, settings.sync_stale_batch_size, now)
    window = int(now.timestamp() // max_age.total_seconds())
    requests = [JobRequest("sync", "sync_user",
                           {"user_id": u, "sync_type": SyncType.SCHEDULED.value},
                           priority=SyncType.SCHEDULED.priority,
                           idempotency_key=f"scheduled-sync:{u}:{window}") for u in users]
    jobs = enqueue_many(requests) if requests else []
    created = sum(1 for j in jobs if j.created)
    log.info("scheduled syncs: %d stale users, %d enqueued, %d already queued", len(users),
             created, len(users) - created)
    return {"stale": len(users), "enqueued": created}


@periodic_task("sync", crontab(minute="*/10"), name="enqueue_stale_syncs")
def enqueue_stale_syncs_task(payload: dict) -> dict:
    """Every 10 minutes (once across the fleet): enqueue SCHEDULED syncs for stale users.

    Under redelivery: a second run in the same age window enqueues nothing new (per-user
    idempotency keys)."""
    return enqueue_stale_syncs()
