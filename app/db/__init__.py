"""The app database: tables (`schema`), engine (`engine`), migrations (`migrate`, `cli`)."""

from app.db.engine import get_engine, reset_engines

__all__ = ["get_engine", "reset_engines"]
