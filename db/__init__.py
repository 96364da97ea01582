"""SQLite storage: the only package that writes SQL. Knows nothing of engines or the UI."""

from gristmill.db.connection import Store, StoreError, open_store

__all__ = ["Store", "StoreError", "open_store"]
