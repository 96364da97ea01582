"""Opening the one SQLite file: pragmas that keep every commit durable, migrations, write transactions."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import sqlite_utils

from gristmill.db.migrations import MIGRATIONS

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


def utc_now() -> str:
    """Timestamps are ISO-8601 UTC text, sortable and readable in sqlite3 or Datasette."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


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
        _migrate(store, stop_before)
    return store


def _migrate(store: Store, stop_before: str | None) -> None:
    """Apply pending migrations, waiting (like every writer) while another process holds the write lock."""
    delay = RETRY_FIRST_S
    while True:
        try:
            MIGRATIONS.apply(store.db, stop_before=stop_before)
            return
        except sqlite3.OperationalError as error:
            if not is_busy(error):
                raise
            if store.conn.in_transaction:
                store.conn.execute("ROLLBACK")
            time.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_S)


def schema_version(store: Store) -> list[str]:
    return [m.name for m in MIGRATIONS.applied(store.db)]


def pending_migrations(store: Store) -> list[str]:
    return [m.name for m in MIGRATIONS.pending(store.db)]
