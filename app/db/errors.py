"""What a database failure means to an operator, with the fix (CLI, stats panels)."""

from __future__ import annotations


def explain_database_error(exc: Exception) -> str | None:
    """A database that is missing, unreachable or not migrated, said with the fix."""
    try:
        from sqlalchemy.exc import OperationalError, ProgrammingError
    except ImportError:  # pragma: no cover - SQLAlchemy is a dependency
        return None
    if not isinstance(exc, OperationalError | ProgrammingError):
        return None
    text = str(exc.orig if getattr(exc, "orig", None) is not None else exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    if "no such table" in first or "does not exist" in first and "relation" in first:
        return (f"the app database is not migrated ({first}): run `clarity db upgrade` "
                "(DATABASE_URL chooses the database)")
    return f"the app database failed: {first}. Check DATABASE_URL; `clarity db current` tells more."
