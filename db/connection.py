"""Opening the one SQLite file: pragmas that keep every commit durable, migrations, write transactions."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import sqlite_utils

from gristmill.db.migrations import MIGRATIONS

BUSY_TIMEOUT_MS = 15_000


def utc_now() -> str:
    """Timestamps are ISO-8601 UTC text, sortable and readable in sqlite3 or Datasette."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class Store:
    """One connection to a gristmill database.

    The connection runs in autocommit mode; every write goes through `write()`, a short
    `BEGIN IMMEDIATE` transaction, so a second process (the review app beside a generator)
    waits on the busy timeout instead of failing with "database is locked".
    """

    def __init__(self, conn: sqlite3.Connection, path: str):
        self.conn = conn
        self.path = path
        self.db = sqlite_utils.Database(conn)

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        if self.conn.in_transaction:  # nested: join the outer transaction
            yield self.conn
            return
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        else:
            self.conn.execute("COMMIT")

    def query(self, sql: str, params: dict | tuple = ()) -> list[sqlite3.Row]:
        return self.conn.execute(sql, params).fetchall()

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def connect(path: str | Path) -> sqlite3.Connection:
    """A raw connection with gristmill's pragmas, without applying migrations."""
    conn = sqlite3.connect(
        str(path), timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
    )
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA journal_mode = WAL")
    # WAL's default NORMAL may lose the last commits on power loss; FULL costs ~3 ms a commit.
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("PRAGMA cache_size = -65536")  # 64 MiB: bulk imports update a random-keyed unique index
    return conn


def open_store(path: str | Path, *, migrate: bool = True, stop_before: str | None = None) -> Store:
    """Open (creating if needed) a database and bring its schema up to date.

    `stop_before` exists for tests that build a database as an older version made it.
    """
    path = Path(path)
    if path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    conn = connect(path)
    store = Store(conn, str(path))
    if migrate:
        MIGRATIONS.apply(store.db, stop_before=stop_before)
    return store


def schema_version(store: Store) -> list[str]:
    return [m.name for m in MIGRATIONS.applied(store.db)]


def pending_migrations(store: Store) -> list[str]:
    return [m.name for m in MIGRATIONS.pending(store.db)]
