"""Opening the one SQLite file: pragmas that keep every commit durable, migrations, write transactions."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, UTC
from pathlib import Path
from urllib.parse import quote

import sqlite_utils

from gristmill.db.migrations import MIGRATIONS

BUSY_TIMEOUT_MS = 15_000


class StoreError(ValueError):
    """The database file cannot be used (missing, a directory, not SQLite, not readable or writable).

    The message names the path; the command line reports it as bad input.
    """


def utc_now() -> str:
    """Timestamps are ISO-8601 UTC text, sortable and readable in sqlite3 or Datasette."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


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

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def connect(path: str | Path, *, create: bool = True) -> sqlite3.Connection:
    """A raw connection with gristmill's pragmas, without applying migrations.

    `create=False` opens an existing file only (SQLite's `mode=rw`): a typo never makes a new database.
    """
    target = f"file:{quote(Path(path).absolute().as_posix())}?mode={'rwc' if create else 'rw'}"
    conn = sqlite3.connect(
        target, uri=True, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False,
    )
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA journal_mode = WAL")
    # WAL's default NORMAL may lose the last commits on power loss; FULL costs ~3 ms a commit.
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("PRAGMA cache_size = -65536")  # 64 MiB: bulk imports update a random-keyed unique index
    return conn


def check_database_file(path: Path, *, create: bool) -> None:
    """Say what is wrong with `path` as a database, in words, before SQLite says it in its own."""
    if path.is_dir():
        raise StoreError(f"database {path}: is a directory, not a database file")
    if not path.exists():
        if not create:
            raise StoreError(f"database {path}: does not exist (`gristmill add FILE` creates it)")
        return
    if not path.is_file():
        raise StoreError(f"database {path}: not a regular file (a device, a pipe or a socket)")
    if not os.access(path, os.R_OK):
        raise StoreError(f"database {path}: not readable (permission denied)")
    if not os.access(path, os.W_OK):
        raise StoreError(f"database {path}: not writable (permission denied); gristmill writes to its database "
                         "(WAL journal, migrations, decisions)")
    with path.open("rb") as handle:
        head = handle.read(16)
    if head and head != b"SQLite format 3\x00":
        raise StoreError(f"database {path}: not a SQLite database")


def open_store(path: str | Path, *, migrate: bool = True, stop_before: str | None = None,
               create: bool = True) -> Store:
    """Open a database (creating it and its directory unless `create=False`) and bring its schema up to date.

    `create=False` is for commands that only read or review: a missing file is a `StoreError` naming the path,
    and nothing is created. `stop_before` exists for tests that build a database as an older version made it.
    """
    path = Path(path)
    check_database_file(path, create=create)
    if create and path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    try:
        conn = connect(path, create=create)
    except sqlite3.DatabaseError as error:
        raise _store_error(path, error) from error
    store = Store(conn, str(path))
    try:
        foreign = _foreign_tables(store)
    except sqlite3.DatabaseError as error:
        store.close()
        raise _store_error(path, error) from error
    if foreign:
        store.close()
        raise StoreError(f"database {path}: a SQLite database, but not gristmill's (it has {foreign}); "
                         "give a new file or a gristmill database")
    if migrate:
        try:
            MIGRATIONS.apply(store.db, stop_before=stop_before)
        except sqlite3.DatabaseError as error:
            store.close()
            if "locked" in str(error) or "busy" in str(error):
                raise
            raise _store_error(path, error) from error
    return store


def _foreign_tables(store: Store) -> str:
    """Tables of some other application, if that is all the file holds: gristmill never migrates into them."""
    names = [row[0] for row in store.conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")]
    if not names or "_sqlite_migrations" in names or "instructions" in names:
        return ""
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    return f"table(s) {shown}"


def _store_error(path: Path, error: sqlite3.DatabaseError) -> Exception:
    text = str(error)
    if "not a database" in text:
        return StoreError(f"database {path}: not a SQLite database")
    if "readonly" in text or "read-only" in text:
        return StoreError(f"database {path}: not writable ({text})")
    if "unable to open" in text:
        return StoreError(f"database {path}: cannot open it ({text})")
    if "malformed" in text:
        return StoreError(f"database {path}: damaged ({text}); `gristmill doctor` checks it")
    return error


def schema_version(store: Store) -> list[str]:
    return [m.name for m in MIGRATIONS.applied(store.db)]


def pending_migrations(store: Store) -> list[str]:
    return [m.name for m in MIGRATIONS.pending(store.db)]
