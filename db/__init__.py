"""SQLite storage: the only package that writes SQL. Knows nothing of engines or the UI."""

from gristmill.db.connection import Store, open_store

__all__ = ["Store", "open_store"]
