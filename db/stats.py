"""Counts for `gristmill stats` and the doctor."""

from __future__ import annotations

from gristmill.db.connection import Store


def collect(store: Store) -> dict[str, dict[str, int]]:
    def grouped(sql: str) -> dict[str, int]:
        return {str(key if key is not None else "unreviewed"): n for key, n in store.conn.execute(sql)}

    return {
        "instructions": {"total": store.conn.execute("SELECT count(*) FROM instructions").fetchone()[0]},
        "types": grouped("SELECT instruction_type, count(*) FROM instructions GROUP BY 1 ORDER BY 1"),
        "generations": grouped("SELECT status, count(*) FROM generations GROUP BY 1 ORDER BY 1"),
        "decisions": grouped("SELECT decision, count(*) FROM generations WHERE status = 'done' GROUP BY 1 ORDER BY 1"),
        "reject_reasons": reject_reasons(store),
        "runs": {
            "total": store.conn.execute("SELECT count(*) FROM runs").fetchone()[0],
            "finished": store.conn.execute("SELECT count(*) FROM runs WHERE finished_at IS NOT NULL").fetchone()[0],
        },
    }


def reject_reasons(store: Store) -> dict[str, int]:
    """The reasons given with the rejects in force, counted ("none": rejected without one)."""
    return {
        str(k or "none"): n
        for k, n in store.conn.execute(
            """SELECT rv.reason, count(*) FROM generations g JOIN reviews rv ON rv.id = g.review_id
               WHERE g.decision = 'reject' GROUP BY 1 ORDER BY 1"""
        )
    }


def health(store: Store) -> dict[str, str]:
    return {
        "integrity_check": store.conn.execute("PRAGMA integrity_check").fetchone()[0],
        "journal_mode": store.conn.execute("PRAGMA journal_mode").fetchone()[0],
        "synchronous": {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}.get(
            store.conn.execute("PRAGMA synchronous").fetchone()[0], "?"
        ),
        "foreign_keys": "on" if store.conn.execute("PRAGMA foreign_keys").fetchone()[0] else "off",
        "busy_timeout_ms": str(store.conn.execute("PRAGMA busy_timeout").fetchone()[0]),
    }


def orphaned_reviews(store: Store) -> int:
    """Review rows whose generation is gone (deleted by hand; the log keeps them). Harmless since generation ids
    are never reused (m010), but a sign of hand edits that `doctor` reports."""
    return store.conn.execute(
        "SELECT count(*) FROM reviews r WHERE NOT EXISTS (SELECT 1 FROM generations g WHERE g.id = r.generation_id)"
    ).fetchone()[0]


JSON_COLUMNS = (("generations", "flags"), ("generations", "style_meta"), ("generations", "timings"),
                ("runs", "params"), ("runs", "settings"), ("instructions", "metadata"))  # fmt: skip


def not_json(store: Store) -> list[tuple[str, str, list[int]]]:
    """The JSON columns where a hand edit left text that is not JSON, with the ids of those rows."""
    found = []
    for table, column in JSON_COLUMNS:
        ids = [r[0] for r in store.conn.execute(
            f"SELECT id FROM {table} WHERE {column} IS NOT NULL AND NOT json_valid({column}) ORDER BY id"
        )]  # fmt: skip
        if ids:
            found.append((table, column, ids))
    return found
