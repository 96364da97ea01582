"""Opening the one SQLite file: pragmas that keep every commit durable, migrations, write transactions."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, UTC
from pathlib import Path
from typing import Any
from urllib.parse import quote

import sqlite_utils

from gristmill import __version__
from gristmill.db.migrations import MIGRATIONS, MigrationError, migration_names

# One attempt at the write lock waits this long inside SQLite; `Store.write` then retries with backoff for as
# long as it takes. Short, because SQLite's wait cannot be interrupted: Ctrl-C lands between attempts.
BUSY_TIMEOUT_MS = 1_000
RETRY_FIRST_S = 0.05
RETRY_MAX_S = 1.0
BUSY_CODES = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


class QueryTooSlow(Exception):
    """A query ran past the step budget it was given (`Store.budget`); nothing was changed."""


class DatabaseBusy(sqlite3.OperationalError):
    """Another process holds the write lock and the caller asked not to wait (`Store.write(wait=False)`)."""


def is_busy(error: BaseException) -> bool:
    """SQLite's 'database is locked' / 'database is busy', by error code where Python gives it."""
    if not isinstance(error, sqlite3.OperationalError):
        return False
    code = getattr(error, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in BUSY_CODES
    text = str(error)
    return "locked" in text or "busy" in text


class StoreError(ValueError):
    """The database file cannot be used (missing, a directory, not SQLite, not readable or writable).

    The message names the path; the command line reports it as bad input.
    """


def json_column(text: str | None, table: str, column: str, row_id: object, default: str | None = None) -> Any:
    """A JSON column's value; text that is not JSON (a hand edit) is one error naming the table, row and column,
    not a crash in whichever command met it first. `default` stands for NULL where the column may hold one."""
    try:
        return json.loads(text if text is not None else default)  # type: ignore[arg-type]  # None: TypeError
    except (TypeError, ValueError):
        raise StoreError(
            f"{table} row {row_id}: column {column} is not JSON ({str(text)[:40]!r}): a hand edit? put valid JSON "
            f"back (find such rows with SELECT id FROM {table} WHERE NOT json_valid({column}))"
        ) from None


def utc_now() -> str:
    """Timestamps are ISO-8601 UTC text, sortable and readable in sqlite3 or Datasette."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class Store:
    """One connection to a gristmill database.

    The connection runs in autocommit mode; every write goes through `write()`, a short
    `BEGIN IMMEDIATE` transaction. A busy database never fails a writer: BEGIN and COMMIT are
    retried with backoff until they land or the user presses Ctrl-C (the transaction then rolls
    back whole). `on_busy(seconds_waited)` is called while waiting, so a command can say why it
    pauses; `on_busy(None)` once the write lands after a wait.
    """

    def __init__(self, conn: sqlite3.Connection, path: str):
        self.conn = conn
        self.path = path
        self.db = sqlite_utils.Database(conn)
        self.on_busy: Callable[[float | None], None] | None = None

    @contextmanager
    def write(self, *, wait: bool = True) -> Iterator[sqlite3.Connection]:
        """One write transaction. `wait=False` raises DatabaseBusy at once instead of waiting for the lock
        (the review app's event loop tries that, and hands the write to a worker thread when it fails)."""
        if self.conn.in_transaction:  # nested: join the outer transaction
            yield self.conn
            return
        if wait:
            self._until_it_lands("BEGIN IMMEDIATE")
        else:
            self.conn.execute("PRAGMA busy_timeout = 0")
            try:
                self.conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as error:
                if is_busy(error):
                    raise DatabaseBusy(str(error)) from error
                raise
            finally:
                self.conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        try:
            yield self.conn
            self._until_it_lands("COMMIT")
        except BaseException:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            raise

    def _until_it_lands(self, statement: str) -> None:
        """Execute BEGIN or COMMIT, retrying while the database is busy; each sleep is where Ctrl-C lands."""
        delay, waited_since = RETRY_FIRST_S, None
        while True:
            try:
                self.conn.execute(statement)
            except sqlite3.OperationalError as error:
                if not is_busy(error):
                    raise
                now = time.monotonic()
                waited_since = waited_since or now
                if self.on_busy:
                    self.on_busy(now - waited_since + BUSY_TIMEOUT_MS / 1000)
                time.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
                continue
            if waited_since is not None and self.on_busy:
                self.on_busy(None)
            return

    @contextmanager
    def budget(self, steps: int) -> Iterator[None]:
        """Run reads that must stay quick (the review app's event loop): past `steps` SQLite VM steps the
        query is interrupted and QueryTooSlow raised, so the caller can hand it to a worker thread."""
        self.conn.set_progress_handler(lambda: 1, steps)
        try:
            yield
        except sqlite3.OperationalError as error:
            if "interrupted" in str(error):
                raise QueryTooSlow(str(error)) from error
            raise
        finally:
            self.conn.set_progress_handler(None, 0)

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
        target,
        uri=True,
        timeout=BUSY_TIMEOUT_MS / 1000,
        isolation_level=None,
        check_same_thread=False,
    )
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA journal_mode = WAL")
    # WAL's default NORMAL may lose the last commits on power loss; FULL costs ~3 ms a commit.
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("PRAGMA cache_size = -65536")  # 64 MiB: bulk imports update a random-keyed unique index
    return conn


SQLITE_HEADER_BYTES = 100


def check_database_file(path: Path, *, create: bool) -> None:
    """Say what is wrong with `path` as a database, in words, before SQLite says it in its own.

    Only metadata (stat, access): never open the file itself, see below.
    """
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
        raise StoreError(
            f"database {path}: not writable (permission denied); gristmill writes to its database "
            "(WAL journal, migrations, decisions)"
        )
    size = path.stat().st_size
    if 0 < size < SQLITE_HEADER_BYTES:  # SQLite took a file this short for an empty database and wrote over it
        raise StoreError(
            f"database {path}: not a SQLite database ({size} byte{'' if size == 1 else 's'}; a database starts with a 100-byte header)"
        )
    if size == 0 and not create and not Path(f"{path}-wal").exists():  # a new database's pages may be in its WAL yet
        raise StoreError(f"database {path}: an empty file, not a database (`gristmill add FILE` makes one)")
    # Whether it is SQLite at all is left to SQLite (its "file is not a database" becomes the same clear line in
    # `_store_error`): opening the file here and closing it would drop every POSIX lock this process holds on it
    # through its other connections (the review app's, a worker's), and another process would then delete the
    # WAL under them: their later commits would go to an unlinked file and be lost.


def open_store(path: str | Path, *, migrate: bool = True, stop_before: str | None = None, create: bool = True) -> Store:
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
        refused = _why_not_to_open(store)
    except sqlite3.DatabaseError as error:
        store.close()
        raise _store_error(path, error) from error
    if refused:
        store.close()
        raise StoreError(f"database {path}: {refused}")
    if migrate:
        try:
            _migrate(store, stop_before)
        except MigrationError as error:
            store.close()
            raise StoreError(f"database {path}: {error}") from error
        except sqlite3.DatabaseError as error:
            store.close()
            if is_busy(error):
                raise
            raise _store_error(path, error) from error
    return store


def _why_not_to_open(store: Store) -> str | None:
    """Why this SQLite file is not one this version may open (another application's, a newer gristmill's)."""
    foreign = _foreign_tables(store)
    if foreign:
        return f"a SQLite database, but not gristmill's (it has {foreign}); give a new file or a gristmill database"
    unknown = _unknown_migrations(store)
    if unknown:
        return (
            f"made by a newer gristmill (its schema has {', '.join(unknown)}, which this version {__version__} "
            "does not know); upgrade gristmill to open it"
        )
    return None


def _unknown_migrations(store: Store) -> list[str]:
    """Migrations applied to this database that this version does not have: a newer gristmill made it, and
    writing to it with older code could break what that version relies on."""
    table = MIGRATIONS.migrations_table
    if not store.conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)).fetchone():
        return []
    known = set(migration_names())
    applied = store.conn.execute(
        f"SELECT name FROM [{table}] WHERE migration_set = ? ORDER BY rowid", (MIGRATIONS.name,)
    ).fetchall()
    return [name for (name,) in applied if name not in known]


def _foreign_tables(store: Store) -> str:
    """Tables of some other application, if that is all the file holds: gristmill never migrates into them."""
    names = [
        row[0]
        for row in store.conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name"
        )
    ]
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


def _migrate(store: Store, stop_before: str | None) -> None:
    """Apply pending migrations under the write lock, waiting (like every writer) while another process holds it.

    Under the lock, because which migrations are pending must be read by one process at a time: two processes
    opening an old database at once would both see m010 pending and the second would rebuild a table the first
    had already rebuilt. Each migration is a savepoint in that one transaction.
    """
    delay = RETRY_FIRST_S
    while True:
        if not MIGRATIONS.pending(store.db):
            return
        # A migration may rebuild a table (SQLite's procedure for what ALTER TABLE cannot do); with foreign keys
        # on, dropping the old table would fail on the rows that refer to it. The pragma is a no-op in a transaction.
        store.conn.execute("PRAGMA foreign_keys = OFF")
        try:
            store.conn.execute("BEGIN IMMEDIATE")
            MIGRATIONS.apply(store.db, stop_before=stop_before)  # reads what is pending again, under the lock
            store.conn.execute("COMMIT")
            return
        except sqlite3.OperationalError as error:
            if store.conn.in_transaction:
                store.conn.execute("ROLLBACK")
            if not is_busy(error):
                raise
            time.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_S)
        except BaseException:
            if store.conn.in_transaction:
                store.conn.execute("ROLLBACK")
            raise
        finally:
            store.conn.execute("PRAGMA foreign_keys = ON")


def schema_version(store: Store) -> list[str]:
    return [m.name for m in MIGRATIONS.applied(store.db)]


def pending_migrations(store: Store) -> list[str]:
    return [m.name for m in MIGRATIONS.pending(store.db)]
