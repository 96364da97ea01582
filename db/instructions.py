"""Instructions: imported once, deduplicated by content hash."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field

from gristmill.db.connection import Store, utc_now


@dataclass(slots=True)  # not frozen: a frozen init costs a third of the import time on 100k rows
class NewInstruction:
    instruction: str
    input: str
    instruction_type: str
    source: str
    content_hash: str
    external_id: str | None = None
    metadata: dict = field(default_factory=dict)


def insert_batch(store: Store, batch: Iterable[NewInstruction]) -> int:
    """Insert inside the caller's transaction; rows whose content hash exists are skipped. Returns rows added."""
    cursor = store.conn.executemany(
        f"INSERT OR IGNORE INTO instructions ({_STAGING_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        _rows(batch, utc_now()),
    )
    return cursor.rowcount


_STAGING_COLUMNS = "external_id, instruction, input, instruction_type, source, content_hash, metadata, created_at"


def _rows(batch: Iterable[NewInstruction], now: str) -> list[tuple]:
    return [
        (
            i.external_id,
            i.instruction,
            i.input,
            i.instruction_type,
            i.source,
            i.content_hash,
            json.dumps(i.metadata, ensure_ascii=False) if i.metadata else "{}",
            now,
        )
        for i in batch
    ]


def stage_begin(store: Store) -> None:
    """An empty staging table for one file, in this connection's TEMP database.

    Writing there takes no lock on the database file: a long import validates and stages its whole
    file while other processes keep writing, then switches it in with one INSERT (`stage_commit`).
    """
    store.conn.execute(
        """CREATE TEMP TABLE IF NOT EXISTS staging_instructions (
               seq INTEGER PRIMARY KEY, external_id TEXT, instruction TEXT, input TEXT, instruction_type TEXT,
               source TEXT, content_hash TEXT, metadata TEXT, created_at TEXT)"""
    )
    store.conn.execute("DELETE FROM temp.staging_instructions")


def stage_batch(store: Store, batch: Iterable[NewInstruction]) -> int:
    rows = _rows(batch, utc_now())
    store.conn.execute("SAVEPOINT stage")  # one temp-only transaction per batch, not one per row
    try:
        store.conn.executemany(
            f"INSERT INTO temp.staging_instructions ({_STAGING_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows
        )
    except BaseException:
        store.conn.execute("ROLLBACK TO stage")
        store.conn.execute("RELEASE stage")
        raise
    store.conn.execute("RELEASE stage")
    return len(rows)


def stage_commit(store: Store) -> int:
    """Insert the staged file in file order, skipping content hashes that exist; returns rows added.

    One short write transaction: a file imports whole or not at all.
    """
    try:
        with store.write() as conn:
            cursor = conn.execute(
                f"""INSERT OR IGNORE INTO instructions ({_STAGING_COLUMNS})
                    SELECT {_STAGING_COLUMNS} FROM temp.staging_instructions ORDER BY seq"""
            )
            return cursor.rowcount
    finally:
        stage_discard(store)


def stage_discard(store: Store) -> None:
    store.conn.execute("DROP TABLE IF EXISTS temp.staging_instructions")


def get(store: Store, instruction_id: int) -> dict | None:
    row = store.conn.execute("SELECT * FROM instructions WHERE id = ?", (instruction_id,)).fetchone()
    return dict(row) if row else None


def count(store: Store) -> int:
    return store.conn.execute("SELECT count(*) FROM instructions").fetchone()[0]


def types(store: Store) -> list[str]:
    return [r[0] for r in store.conn.execute("SELECT DISTINCT instruction_type FROM instructions ORDER BY 1")]
