"""The app database engine, and the few dialect-aware statements the handlers share.

`DATABASE_URL` picks the backend: unset, a SQLite file in the state directory; in
production `postgresql+psycopg://...`. The handlers' SQL is the same on both; where the
dialects differ (INSERT ... ON CONFLICT) the difference is kept here.
"""

from __future__ import annotations

import logging
import operator
import threading
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine, make_url

from app.jobs.settings import HandlerSettings, get_handler_settings

log = logging.getLogger("clarity.db")

_engines: dict[str, Engine] = {}
_lock = threading.Lock()


def create_db_engine(url: str, *, pool_size: int = 5, echo: bool = False) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database and database != ":memory:" and not database.startswith("file:"):
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, echo=echo, connect_args={"timeout": 30})
        _configure_sqlite(engine)
        return engine
    return sa.create_engine(url, echo=echo, pool_size=pool_size, max_overflow=pool_size,
                            pool_pre_ping=True, pool_recycle=1800)


def _configure_sqlite(engine: Engine) -> None:
    # pysqlite opens transactions lazily and as DEFERRED: two workers that both read, then
    # write, deadlock on the lock upgrade and one fails with "database is locked" at once
    # (the busy timeout does not apply to an upgrade). BEGIN IMMEDIATE takes the write lock
    # up front, so concurrent writers queue on the busy timeout instead.
    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        # WAL lets readers (the admin dashboard) run while a worker writes; in-memory
        # databases answer "memory" and ignore it.
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn):
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def get_engine(settings: HandlerSettings | None = None) -> Engine:
    """The engine for DATABASE_URL, one per process and URL.

    The embedded default (DATABASE_URL unset: SQLite in STATE_DIR) is migrated to the
    latest revision on first use, so a fresh checkout's producer, worker or admin works
    without a `clarity db upgrade` first. A configured database (PostgreSQL in production)
    is never migrated behind the operator's back: `clarity db upgrade` on deploy."""
    settings = settings or get_handler_settings()
    url = settings.database_connection_url()
    with _lock:
        engine = _engines.get(url)
        if engine is None:
            engine = create_db_engine(url, pool_size=settings.database_pool_size,
                                      echo=settings.database_echo)
            if settings.database_url is None:
                _migrate_embedded(engine)
            _engines[url] = engine
        return engine


def _migrate_embedded(engine: Engine) -> None:
    from app.db import migrate

    # Several processes may start at once: SQLite's BEGIN IMMEDIATE (above) serialises
    # them, and the later ones find the database at head and change nothing.
    if migrate.current_revision(engine) != migrate.head_revision():
        migrate.upgrade("head", engine)
        log.info("migrated the embedded SQLite database %s to the latest revision",
                 engine.url.database)


def reset_engines() -> None:
    """Dispose of cached engines (tests; after a fork, each process must open its own)."""
    with _lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()


def dialect_insert(conn: Connection, table: sa.Table):
    """INSERT with the dialect's ON CONFLICT support (SQLite and PostgreSQL spell it alike)."""
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table)
    if conn.dialect.name == "sqlite":
        return sqlite.insert(table)
    raise RuntimeError(f"unsupported database {conn.dialect.name!r}: use SQLite or PostgreSQL")


COPY_THRESHOLD = 200


def upsert(conn: Connection, table: sa.Table, rows: Sequence[dict], key: Iterable[str],
           compare: Iterable[str] | None = None, touch: dict | None = None) -> int:
    """Insert `rows`, or update the existing row with the same `key` where any column in
    `compare` differs. Returns how many rows were inserted or changed: rows whose data
    is unchanged are not written at all, so a repeated upsert of the same data returns 0
    and leaves `touch` columns (e.g. updated_at) as they were.

    One statement, executed for many rows: SQLAlchemy compiles it once (cached) and its
    "insertmanyvalues" mode sends the rows as batched multi-row VALUES with RETURNING.
    """
    if not rows:
        return 0
    key = list(key)
    touch = touch or {}
    columns = list(rows[0].keys())
    compare = [c for c in (compare if compare is not None else columns) if c not in key]
    if conn.dialect.name == "postgresql" and len(rows) >= COPY_THRESHOLD:
        return _upsert_by_copy(conn, table, rows, key, compare, touch)
    stmt = _on_conflict(dialect_insert(conn, table), table, key, compare, touch)
    params = [dict(row, **touch) for row in rows] if touch else list(rows)
    return len(conn.execute(stmt, params).all())


def _on_conflict(stmt, table: sa.Table, key: list[str], compare: list[str], touch: dict):
    """On a key conflict, update only where a compared column differs (so an unchanged row
    is not written, and `touch` columns keep their value); return the written rows' ids."""
    if compare:
        differs = sa.or_(*[table.c[c].is_distinct_from(stmt.excluded[c]) for c in compare])
        stmt = stmt.on_conflict_do_update(
            index_elements=key, set_={c: stmt.excluded[c] for c in [*compare, *touch]},
            where=differs)
    else:
        stmt = stmt.on_conflict_do_nothing(index_elements=key)
    return stmt.returning(next(iter(table.primary_key.columns)))


def _upsert_by_copy(conn: Connection, table: sa.Table, rows: Sequence[dict], key: list[str],
                    compare: list[str], touch: dict) -> int:
    """PostgreSQL bulk path: COPY the rows into a temporary staging table, then update the
    rows that differ and insert the new ones from it. psycopg parses every statement's placeholders in
    Python, which makes a 1,000-row multi-VALUES INSERT cost ~60 ms before it is even
    sent; COPY streams rows with no parsing and is ~20x faster for a large sync."""
    row_columns = list(rows[0].keys())
    touched = [c for c in touch if c not in rows[0]]
    columns = [*row_columns, *touched]
    quote = conn.dialect.identifier_preparer.quote
    column_list = ", ".join(quote(c) for c in columns)
    # One staging table per target and column set, kept for the session: creating a
    # temporary table writes the system catalogs (5-10 ms, 40 times in one user's sync).
    # ON COMMIT DELETE ROWS empties it at commit, and it is emptied after each use in case
    # one transaction upserts into the same table twice.
    digest = zlib.crc32(column_list.encode())
    staging = f"_upsert_{table.name}_{digest:08x}"
    conn.exec_driver_sql(
        f"CREATE TEMPORARY TABLE IF NOT EXISTS {quote(staging)} ON COMMIT DELETE ROWS AS "
        f"SELECT {column_list} FROM {quote(table.name)} WITH NO DATA")
    processors = [table.c[c].type.bind_processor(conn.dialect) for c in columns]
    touch_values = tuple(touch[c] for c in touched)
    pick = operator.itemgetter(*row_columns)
    cursor = conn.connection.driver_connection.cursor()
    try:
        with cursor.copy(f"COPY {quote(staging)} ({column_list}) FROM STDIN") as copy:
            if not any(processors) and len(row_columns) > 1:  # psycopg adapts them itself
                for row in rows:
                    copy.write_row(pick(row) + touch_values)
            else:
                for row in rows:
                    values = [row[c] for c in row_columns] + list(touch_values)
                    copy.write_row([v if p is None else p(v)
                                    for p, v in zip(processors, values, strict=True)])
    finally:
        cursor.close()
    # Compared on the staging table: an UPDATE of the rows that differ, then an INSERT of
    # the keys not there yet. For a repeat sync that changes nothing, both are one join and
    # nothing is written; INSERT ... ON CONFLICT instead tries (and undoes) an insert of every
    # row. ON CONFLICT stays on the INSERT for a concurrent writer of the same keys.
    source = sa.table(staging, *[sa.column(c) for c in columns])
    same_key = sa.and_(*[table.c[k] == source.c[k] for k in key])
    leading = {row[key[0]] for row in rows} if key[0] in rows[0] else ()
    if len(leading) == 1:
        # One account's rows: said outright, the unique index's range on the leading key
        # column is all PostgreSQL reads, not every account's rows.
        same_key = sa.and_(table.c[key[0]] == next(iter(leading)), same_key)
    changed = 0
    if compare:
        differs = sa.or_(*[table.c[c].is_distinct_from(source.c[c]) for c in compare])
        update = (sa.update(table).where(same_key, differs)
                  .values({c: source.c[c] for c in [*compare, *touch]}))
        changed += conn.execute(update).rowcount
    new_rows = sa.select(*source.c).where(~sa.exists().where(same_key))
    stmt = _on_conflict(postgresql.insert(table).from_select(columns, new_rows), table, key,
                        compare, touch)
    changed += len(conn.execute(stmt).all())
    conn.exec_driver_sql(f"DELETE FROM {quote(staging)}")
    return changed
