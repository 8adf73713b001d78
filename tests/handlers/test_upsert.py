"""The bulk upsert under the sync (app.db.engine.upsert), on SQLite and PostgreSQL: large
enough for PostgreSQL's COPY path, where rows are compared on a staging table."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import sqlalchemy as sa

from app.db.engine import COPY_THRESHOLD, upsert
from app.db.schema import linked_accounts, transactions

KEY = ["account_id", "provider_transaction_id"]
DAY1, DAY2, DAY3 = (dt.datetime(2026, 3, d, tzinfo=dt.UTC) for d in (1, 2, 3))


def make_account(conn) -> int:
    return conn.execute(linked_accounts.insert().values(
        user_id=1, provider="test", provider_account_id="a1", name="n", created_at=DAY1,
        updated_at=DAY1).returning(linked_accounts.c.id)).scalar_one()


def txn(account_id: int, i: int, amount: str = "10.00") -> dict:
    return {"account_id": account_id, "provider_transaction_id": f"t{i}",
            "posted_date": dt.date(2026, 1, 1) + dt.timedelta(days=i % 300),
            "amount": Decimal(amount), "currency": "USD", "category": "Buy",
            "description": f"Transaction {i}", "symbol": "VT"}


def stored(conn) -> dict:
    return {r.provider_transaction_id: (r.amount, r.updated_at)
            for r in conn.execute(sa.select(transactions)).all()}


def test_bulk_upsert_writes_only_what_changed(db):
    n = 2 * COPY_THRESHOLD
    with db.begin() as conn:
        account = make_account(conn)
        rows = [txn(account, i) for i in range(n)]
        assert upsert(conn, transactions, rows, KEY, touch={"updated_at": DAY1}) == n
    with db.begin() as conn:  # the same data again: nothing written, updated_at kept
        assert upsert(conn, transactions, rows, KEY, touch={"updated_at": DAY2}) == 0
        assert {v[1] for v in stored(conn).values()} == {DAY1}
    changed = [txn(account, i, "11.00") if i % 40 == 0 else txn(account, i) for i in range(n)]
    added = [txn(account, n + i) for i in range(COPY_THRESHOLD)]
    with db.begin() as conn:
        # Twice into one table in one transaction: the second call must not see the
        # first one's rows (the staging table is reused).
        assert upsert(conn, transactions, changed, KEY, touch={"updated_at": DAY3}) == n // 40
        again = [*added, txn(account, 40, "12.00")]
        assert upsert(conn, transactions, again, KEY, touch={"updated_at": DAY3}) == len(again)
    with db.connect() as conn:
        rows_now = stored(conn)
    assert len(rows_now) == n + len(added)
    assert rows_now["t40"] == (Decimal("12.0000"), DAY3)
    assert rows_now["t80"] == (Decimal("11.0000"), DAY3)
    assert rows_now["t41"] == (Decimal("10.0000"), DAY1)
    assert rows_now[f"t{n}"] == (Decimal("10.0000"), DAY3)


def test_a_failed_transaction_leaves_no_staged_rows_behind(db):
    n = COPY_THRESHOLD
    with db.begin() as conn:
        account = make_account(conn)
    try:
        with db.begin() as conn:
            upsert(conn, transactions, [txn(account, i) for i in range(n)], KEY,
                   touch={"updated_at": DAY1})
            raise RuntimeError("provider went away mid-sync")
    except RuntimeError:
        pass
    with db.begin() as conn:
        assert upsert(conn, transactions, [txn(account, 0)] * 1 + [
            txn(account, i) for i in range(1, n)], KEY, touch={"updated_at": DAY2}) == n
        assert len(stored(conn)) == n
