"""The legacy scheduler's table, `queued_sync`: writing rows, claiming them, settling them.

A row's life:

    pending --(poller claims)--> processing --> done | failed | pending (retry later)
    pending --(poller, fallback_unsure row)--> processing --> moved (handed to the queue)
    pending --(migrator claims)--> migrating --> moved

A claim sets `claimed_by` and `claimed_until`; a claim whose holder died (SIGKILL, host
lost) is taken over once `claimed_until` has passed, so nothing stays stuck. Every update
after the claim is conditional on `claimed_by` still being ours: a holder that lost its
claim (it stalled past the deadline) cannot overwrite the new holder's outcome.

Claiming: PostgreSQL selects with `FOR UPDATE SKIP LOCKED`, so concurrent pollers and
migrators each take different rows without waiting on one another. SQLite has no row
locks; there the engine opens every transaction with `BEGIN IMMEDIATE` (see
app.db.engine), which takes the database's write lock before the SELECT, so the
`UPDATE ... WHERE id IN (SELECT ...) RETURNING` runs alone and two claimers never see the
same row as free. The outer UPDATE repeats the status condition as a second guard.

Origins: NULL/"legacy" (written by the old app), "routed" (the router chose legacy),
"fallback" (Redis refused the job before it was sent: certainly not in Redis) and
"fallback_unsure" (the call to Redis failed after the job may have been sent: it may or may
not be in Redis). An unsure row is never run in-process; it is handed back to the queue
with its idempotency key once Redis answers, and the queue's idempotency check makes that
a no-op if the first attempt did land.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from app.db.schema import queued_sync, utcnow

LEGACY_QUEUE, LEGACY_TASK = "sync", "sync_user"


class Status:
    PENDING = "pending"
    PROCESSING = "processing"
    DONE = "done"
    FAILED = "failed"
    MIGRATING = "migrating"
    MOVED = "moved"


class Origin:
    LEGACY = "legacy"
    ROUTED = "routed"
    FALLBACK = "fallback"
    FALLBACK_UNSURE = "fallback_unsure"


@dataclass(frozen=True)
class LegacyRow:
    id: int
    queue: str
    task: str
    payload: dict
    priority: int
    scheduled_at: dt.datetime
    created_at: dt.datetime
    attempts: int
    origin: str
    job_id: str | None
    idempotency_key: str | None

    @property
    def stable_idempotency_key(self) -> str:
        """The row's own key, or one derived from the row alone: a re-run after a crash
        derives the same key, so the queue refuses to take the row twice."""
        if self.idempotency_key:
            return self.idempotency_key
        stamp = int(self.created_at.timestamp() * 1_000_000)
        return f"queued_sync:{self.id}:{stamp}"

    @property
    def stable_job_id(self) -> str:
        return self.job_id or f"legacy-{self.id}"


def _row(r) -> LegacyRow:
    queue = r.queue or LEGACY_QUEUE
    task = r.task or LEGACY_TASK
    payload = dict(r.payload or {})
    if r.queue is None and r.task is None:
        # Rows written by the old scheduler carry the sync's fields in columns.
        payload.setdefault("user_id", r.user_id)
        payload.setdefault("sync_type", r.sync_type)
    return LegacyRow(r.id, queue, task, payload, r.priority, r.scheduled_at, r.created_at,
                     r.attempts, r.origin or Origin.LEGACY, r.job_id, r.idempotency_key)


@dataclass(frozen=True)
class NewRow:
    queue: str
    task: str
    payload: dict
    priority: int
    origin: str
    job_id: str
    idempotency_key: str | None
    scheduled_at: dt.datetime | None = None  # UTC; None = now


class LegacyStore:
    def __init__(self, engine: Engine):
        self.engine = engine

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    # -- writing -------------------------------------------------------------------------

    def insert(self, rows: list[NewRow]) -> list[str]:
        """Write rows in one transaction; returns each row's job id. A row whose
        idempotency key is already in the table is not written again: the existing row's
        job id is returned instead (the caller retried)."""
        if not rows:
            return []
        now = utcnow()
        values = [self._values(r, now) for r in rows]
        try:
            with self.engine.begin() as conn:
                conn.execute(queued_sync.insert(), values)
            return [r.job_id for r in rows]
        except IntegrityError:
            pass  # some key was seen before: go one by one
        out = []
        for row, value in zip(rows, values, strict=True):
            try:
                with self.engine.begin() as conn:
                    conn.execute(queued_sync.insert(), [value])
                out.append(row.job_id)
            except IntegrityError:
                with self.engine.connect() as conn:
                    existing = conn.execute(sa.select(queued_sync.c.job_id).where(
                        queued_sync.c.idempotency_key == row.idempotency_key)).scalar()
                if existing is None:
                    raise
                out.append(existing)
        return out

    @staticmethod
    def _values(r: NewRow, now: dt.datetime) -> dict:
        user_id = r.payload.get("user_id") if isinstance(r.payload, dict) else None
        try:
            user_id = int(user_id) if user_id is not None else 0
        except (TypeError, ValueError):
            user_id = 0
        sync_type = str(r.payload.get("sync_type") or "SCHEDULED")[:20] \
            if r.task == LEGACY_TASK else "-"
        return {"user_id": user_id, "sync_type": sync_type, "priority": int(r.priority),
                "payload": r.payload, "status": Status.PENDING, "attempts": 0,
                "scheduled_at": r.scheduled_at or now, "created_at": now, "updated_at": now,
                "queue": r.queue, "task": r.task, "job_id": r.job_id,
                "idempotency_key": r.idempotency_key, "origin": r.origin}

    # -- claiming ------------------------------------------------------------------------

    def claim(self, holder: str, limit: int, claim_seconds: float, *, to_status: str,
              from_statuses: tuple[str, ...], due_only: bool, origins: tuple[str, ...] | None
              = None, stale_status: str | None = None,
              exclude_ids: frozenset[int] = frozenset()) -> list[LegacyRow]:
        """Claim up to `limit` rows: `from_statuses` rows (due ones if `due_only`) not under
        a live claim, plus `stale_status` rows whose claim expired. Highest priority and
        earliest due first."""
        now = utcnow()
        until = now + dt.timedelta(seconds=claim_seconds)
        t = queued_sync
        free = sa.or_(t.c.claimed_until.is_(None), t.c.claimed_until < now)
        fresh = sa.and_(t.c.status.in_(from_statuses), free)
        if due_only:
            fresh = sa.and_(fresh, t.c.scheduled_at <= now)
        if origins is not None:
            origin_match = t.c.origin.in_([o for o in origins if o is not None])
            if Origin.LEGACY in origins:
                origin_match = sa.or_(origin_match, t.c.origin.is_(None))
            fresh = sa.and_(fresh, origin_match)
        condition = fresh
        if stale_status is not None:
            condition = sa.or_(fresh, sa.and_(t.c.status == stale_status,
                                              t.c.claimed_until < now))
        if exclude_ids:
            condition = sa.and_(condition, t.c.id.not_in(list(exclude_ids)))
        pick = (sa.select(t.c.id).where(condition)
                .order_by(t.c.priority.desc(), t.c.scheduled_at, t.c.id).limit(limit))
        if self.dialect == "postgresql":
            # A materialized CTE: `WHERE id IN (SELECT ... LIMIT n FOR UPDATE SKIP LOCKED)`
            # may be re-run by the planner and claim more than n rows.
            picked = pick.with_for_update(skip_locked=True).cte("picked") \
                .prefix_with("MATERIALIZED")
            ids = sa.select(picked.c.id).scalar_subquery()
        else:
            ids = pick.scalar_subquery()
        stmt = (t.update().where(t.c.id.in_(ids), condition)
                .values(status=to_status, claimed_by=holder, claimed_until=until,
                        updated_at=now)
                .returning(*t.c))
        with self.engine.begin() as conn:
            rows = conn.execute(stmt).all()
        return sorted((_row(r) for r in rows), key=lambda r: (-r.priority, r.scheduled_at))

    def _settle(self, row_ids: list[int] | int, holder: str, **values) -> int:
        ids = [row_ids] if isinstance(row_ids, int) else list(row_ids)
        if not ids:
            return 0
        t = queued_sync
        values.setdefault("updated_at", utcnow())
        with self.engine.begin() as conn:
            return conn.execute(t.update().where(t.c.id.in_(ids), t.c.claimed_by == holder)
                                .values(**values)).rowcount or 0

    def mark_done(self, row_id: int, holder: str, attempts: int) -> int:
        return self._settle(row_id, holder, status=Status.DONE, attempts=attempts,
                            last_error=None, claimed_until=None)

    def mark_failed(self, row_id: int, holder: str, attempts: int, error: str) -> int:
        return self._settle(row_id, holder, status=Status.FAILED, attempts=attempts,
                            last_error=error[:4000], claimed_until=None)

    def retry_later(self, row_id: int, holder: str, attempts: int, error: str | None,
                    at: dt.datetime) -> int:
        return self._settle(row_id, holder, status=Status.PENDING, attempts=attempts,
                            last_error=error[:4000] if error else None, scheduled_at=at,
                            claimed_by=None, claimed_until=None)

    def release(self, row_ids: list[int], holder: str, backoff_seconds: float = 0.0,
                error: str | None = None) -> int:
        """Give rows back untouched (e.g. Redis is still down); no other claimer takes
        them for `backoff_seconds`."""
        until = utcnow() + dt.timedelta(seconds=backoff_seconds) if backoff_seconds else None
        values = {"status": Status.PENDING, "claimed_until": until}
        if error is not None:
            values["last_error"] = error[:4000]
        return self._settle(row_ids, holder, **values)

    def mark_moved(self, moved: list[tuple[int, str, str]], holder: str) -> int:
        """moved: (row id, queue job id, idempotency key) for rows now in the queue."""
        if not moved:
            return 0
        t = queued_sync
        now = utcnow()
        stmt = (t.update().where(t.c.id == sa.bindparam("row_id"),
                                 t.c.claimed_by == holder)
                .values(status=Status.MOVED, job_id=sa.bindparam("new_job_id"),
                        idempotency_key=sa.bindparam("key"), claimed_until=None,
                        updated_at=now))
        with self.engine.begin() as conn:
            result = conn.execute(stmt, [{"row_id": i, "new_job_id": j, "key": k}
                                         for i, j, k in moved])
            return result.rowcount or 0

    # -- looking -------------------------------------------------------------------------

    def counts(self) -> dict:
        """{"status": {status: n}, "origin": {origin: n}, "backlog": pending+processing}."""
        t = queued_sync
        with self.engine.connect() as conn:
            by_status = dict(conn.execute(
                sa.select(t.c.status, sa.func.count()).group_by(t.c.status)).all())
            by_origin: dict[str, int] = {}
            for origin, n in conn.execute(
                    sa.select(t.c.origin, sa.func.count()).group_by(t.c.origin)).all():
                origin = origin or Origin.LEGACY
                by_origin[origin] = by_origin.get(origin, 0) + n
        backlog = sum(by_status.get(s, 0) for s in
                      (Status.PENDING, Status.PROCESSING, Status.MIGRATING))
        return {"status": by_status, "origin": by_origin, "backlog": backlog}

    def pending_count(self) -> int:
        t = queued_sync
        with self.engine.connect() as conn:
            return conn.execute(sa.select(sa.func.count()).where(
                t.c.status.in_([Status.PENDING, Status.MIGRATING]))).scalar_one()
