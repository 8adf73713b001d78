"""A lease lock in the app database, for work that must never run twice at once.

A row per lock name; taking it inserts the row or takes over an expired one in one
statement, so two workers racing for it cannot both win. The lease expires by itself if
the holder dies, so a crashed run does not block the next forever.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import uuid
from contextlib import contextmanager

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from app.db.engine import dialect_insert
from app.db.schema import job_locks, utcnow


class LockHeld(Exception):
    """Another holder has the lock."""


def acquire(engine: Engine, name: str, ttl: dt.timedelta, holder: str | None = None) -> str | None:
    """Take `name` for `ttl`; returns the holder token, or None if someone else has it."""
    holder = holder or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    now = utcnow()
    with engine.begin() as conn:
        stmt = dialect_insert(conn, job_locks).values(name=name, holder=holder,
                                                      expires_at=now + ttl)
        stmt = stmt.on_conflict_do_update(
            index_elements=["name"],
            set_={"holder": stmt.excluded.holder, "expires_at": stmt.excluded.expires_at},
            where=job_locks.c.expires_at < now)
        conn.execute(stmt)
        current = conn.execute(sa.select(job_locks.c.holder)
                               .where(job_locks.c.name == name)).scalar_one()
    return holder if current == holder else None


def release(engine: Engine, name: str, holder: str) -> None:
    with engine.begin() as conn:
        conn.execute(job_locks.delete().where(job_locks.c.name == name,
                                              job_locks.c.holder == holder))


@contextmanager
def db_lock(engine: Engine, name: str, ttl: dt.timedelta):
    holder = acquire(engine, name, ttl)
    if holder is None:
        raise LockHeld(name)
    try:
        yield holder
    finally:
        release(engine, name, holder)
