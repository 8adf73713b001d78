"""Sync handler against the fake aggregator, on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
import sqlalchemy as sa
from huey.exceptions import CancelExecution

from app.contracts import SyncType
from app.db.schema import (
    holdings,
    linked_accounts,
    portfolio_snapshots,
    sync_log,
    sync_state,
    transactions,
)
from app.devstack.fake_aggregator import DataSet
from app.jobs.aggregator import AggregatorClient, AggregatorRejected, AggregatorUnavailable
from app.jobs.settings import get_handler_settings
from app.jobs.sync import run_sync, stale_users, sync_user


def snapshot_of(engine):
    with engine.connect() as conn:
        return {t.name: sorted(map(tuple, conn.execute(sa.select(t)).all()), key=repr)
                for t in (linked_accounts, holdings, transactions, portfolio_snapshots)}


def client(sleeps=None):
    return AggregatorClient(get_handler_settings(), backoff_base=0.001,
                            sleep=(sleeps.append if sleeps is not None else lambda s: None))


def test_sync_stores_accounts_holdings_transactions_and_snapshot(db, fake_aggregator):
    fake_aggregator.add_user("7", accounts=2, holdings=60, transactions=120)
    result = sync_user({"user_id": 7, "sync_type": "INITIAL"})
    assert result["accounts"] == 2 and result["holdings"] == 120
    assert result["transactions"] == 240
    with db.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(holdings)).scalar() == 120
        assert conn.execute(sa.select(sa.func.count()).select_from(transactions)).scalar() == 240
        snap = conn.execute(sa.select(portfolio_snapshots)).one()
        log = conn.execute(sa.select(sync_log)).one()
    assert snap.holdings_count == 120 and snap.accounts_count == 2
    assert snap.total_value > 0 and snap.annual_dividend_income > 0
    assert snap.monthly_dividend_income == (snap.annual_dividend_income / 12).quantize(
        Decimal("0.0001"))
    assert log.status == "success" and log.sync_type == "INITIAL"
    assert log.rows_changed == 2 + 120 + 240 and log.duration_ms is not None
    # pagination: 60 holdings at 50 a page is two pages per account
    assert fake_aggregator.count("/holdings") == 4


def test_same_sync_run_twice_changes_nothing(db, fake_aggregator):
    fake_aggregator.add_user("8", accounts=2, holdings=10, transactions=30)
    first = sync_user({"user_id": 8, "sync_type": "MANUAL"})
    before = snapshot_of(db)
    second = sync_user({"user_id": 8, "sync_type": "MANUAL"})
    assert first["rows_changed"] > 0
    assert second["rows_changed"] == 0
    assert snapshot_of(db) == before  # including updated_at and computed_at
    with db.connect() as conn:
        statuses = conn.execute(sa.select(sync_log.c.status, sync_log.c.rows_changed)
                                .order_by(sync_log.c.id)).all()
    assert [tuple(s) for s in statuses] == [("success", first["rows_changed"]), ("success", 0)]


def test_changed_provider_data_is_applied_and_closed_positions_removed(db, fake_aggregator):
    data = fake_aggregator.add_user("9", accounts=1, holdings=5, transactions=5)
    sync_user({"user_id": 9})
    account = data.accounts[0]["id"]
    data.holdings[account].pop()  # position closed
    data.holdings[account][0]["price"]["amount"] = Decimal("99.5")
    result = sync_user({"user_id": 9})
    assert result["rows_changed"] == 2
    with db.connect() as conn:
        rows = conn.execute(sa.select(holdings.c.provider_holding_id, holdings.c.price)
                            .order_by(holdings.c.provider_holding_id)).all()
    assert len(rows) == 4
    assert rows[0].price == Decimal("99.5")


def test_expired_token_is_refreshed_once(db, fake_aggregator):
    fake_aggregator.add_user("10", accounts=1, holdings=3, transactions=3)
    fake_aggregator.token_max_uses = 2
    result = run_sync(10, SyncType.MANUAL, client=client())
    assert result.accounts == 1
    assert fake_aggregator.tokens_issued >= 2
    assert fake_aggregator.count("/accounts", 200) == 1


def test_rate_limit_honours_retry_after(db, fake_aggregator):
    fake_aggregator.add_user("11", accounts=1, holdings=3, transactions=3)
    fake_aggregator.retry_after = "2"
    fake_aggregator.fail("/holdings", "429")
    sleeps = []
    run_sync(11, SyncType.MANUAL, client=client(sleeps))
    assert sleeps == [2.0]


def test_long_retry_after_gives_the_job_back_to_the_queue(db, fake_aggregator):
    fake_aggregator.add_user("12", accounts=1)
    fake_aggregator.retry_after = "3600"
    fake_aggregator.fail("/accounts", "503")
    with pytest.raises(AggregatorUnavailable) as info:
        run_sync(12, SyncType.MANUAL, client=client())
    assert info.value.retry_after == 3600
    with db.connect() as conn:
        log = conn.execute(sa.select(sync_log)).one()
        state = conn.execute(sa.select(sync_state)).one()
    assert log.status == "failed" and "3600" in log.error
    assert state.last_status == "failed" and state.last_success_at is None


@pytest.mark.parametrize("fault", ["500", "malformed", "badpage"])
def test_server_errors_and_malformed_pages_are_retried(db, fake_aggregator, fault):
    fake_aggregator.add_user("13", accounts=1, holdings=4, transactions=4)
    fake_aggregator.fail("/holdings", fault, times=2)
    result = run_sync(13, SyncType.MANUAL, client=client())
    assert result.holdings == 4


def test_persistent_server_errors_raise_transient(db, fake_aggregator):
    fake_aggregator.add_user("14", accounts=1)
    fake_aggregator.fail("/accounts", "500", times=10)
    with pytest.raises(AggregatorUnavailable):
        run_sync(14, SyncType.MANUAL, client=client())


def test_provider_4xx_fails_fast_with_the_providers_message(db, fake_aggregator):
    fake_aggregator.add_user("15", accounts=1)
    fake_aggregator.fail("/holdings", "400", times=5)
    with pytest.raises(AggregatorRejected) as info:
        run_sync(15, SyncType.MANUAL, client=client())
    assert info.value.code == "Y800" and "accountId" in info.value.provider_message
    assert fake_aggregator.count("/holdings") == 1
    fake_aggregator.fail("/holdings", "400")
    with pytest.raises(CancelExecution):
        sync_user({"user_id": 15})


def test_bad_payload_is_not_retried(db):
    with pytest.raises(CancelExecution):
        sync_user({"sync_type": "MANUAL"})
    with pytest.raises(CancelExecution):
        sync_user({"user_id": 1, "sync_type": "SOMETIMES"})


def test_sync_types_map_to_priorities():
    assert SyncType.WEBHOOK.priority == 10 and SyncType.MANUAL.priority == 5
    assert SyncType.INITIAL.priority == 5 and SyncType.SCHEDULED.priority == 3


def test_stale_users_are_found_oldest_first_in_bounded_batches(db):
    now = dt.datetime(2026, 11, 28, 12, tzinfo=dt.UTC)
    with db.begin() as conn:
        conn.execute(sync_state.insert(), [
            {"user_id": 1, "last_success_at": now - dt.timedelta(hours=30)},
            {"user_id": 2, "last_success_at": now - dt.timedelta(hours=2)},
            {"user_id": 3, "last_success_at": None},
            {"user_id": 4, "last_success_at": now - dt.timedelta(hours=50)},
        ])
    with db.connect() as conn:
        assert stale_users(conn, dt.timedelta(hours=24), 10, now) == [3, 4, 1]
        assert stale_users(conn, dt.timedelta(hours=24), 2, now) == [3, 4]


def test_dataset_generation_is_deterministic():
    a = DataSet.generate("1", accounts=1, holdings=2, transactions=2, today=dt.date(2026, 1, 1))
    b = DataSet.generate("1", accounts=1, holdings=2, transactions=2, today=dt.date(2026, 1, 1))
    assert a == b


def test_unchanged_provider_data_skips_the_account_and_changed_data_compares_it_all(
        db, fake_aggregator, monkeypatch):
    data = fake_aggregator.add_user("12", accounts=2, holdings=5, transactions=10)
    sync_user({"user_id": 12})
    first_account = data.accounts[0]["id"]
    # A row changed behind the handler's back: an unchanged repeat does not even look
    # (nothing to compare when the provider sent exactly what was applied)...
    with db.begin() as conn:
        conn.execute(sa.update(transactions).values(amount=Decimal(-1)))
    assert sync_user({"user_id": 12})["rows_changed"] == 0

    def amounts():
        with db.connect() as conn:
            return set(conn.execute(sa.select(transactions.c.amount)).scalars())

    assert amounts() == {Decimal(-1)}
    # ...while new data for one account compares (and repairs) every row of that account.
    data.holdings[first_account][0]["quantity"] = Decimal(99)
    result = sync_user({"user_id": 12})
    assert result["rows_changed"] == 1 + 10
    assert Decimal(-1) in amounts() and len(amounts()) > 1
    # A new row mapping (ROW_MAPPING_VERSION) makes every account compare again.
    monkeypatch.setattr("app.jobs.sync.ROW_MAPPING_VERSION", 2)
    assert sync_user({"user_id": 12})["rows_changed"] == 10
    assert Decimal(-1) not in amounts()
