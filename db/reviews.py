"""Review decisions: an append-only log, plus the queue queries the review app pages through.

Only rows are written here. `generations.decision`/`review_id` (the current decision, which the
queue, counts and export read through an index) are kept by triggers in the database (migration
m005), so a row written with sqlite3 or Datasette counts exactly like one written by gristmill.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from gristmill.db.connection import Store, utc_now
from gristmill.db.filters import GENERATIONS_ONLY, Filter, Param, where_sql

DECISIONS = ("accept", "reject", "skip")
# a review row in force: a decision that no `undo` row cancelled (the triggers resolve undo rows, targeted
# or not, into `review_cancellations`, keyed by the cancelled row: one index seek)
IN_FORCE = "r.decision != 'undo' AND NOT EXISTS (SELECT 1 FROM review_cancellations c WHERE c.review_id = r.id)"
REVIEW_STATES = ("unreviewed", "accept", "reject", "skip", "all")


@dataclass(frozen=True)
class Decision:
    generation_id: int
    decision: str
    edited_response: str | None = None
    reason: str | None = None  # why a reject: one key of `[review] reject_reasons`


@dataclass(frozen=True)
class QueueFilter:
    """Which generations the review queue shows. Every field narrows; defaults show the unreviewed."""

    state: str = "unreviewed"
    instruction_type: str | None = None
    style: str | None = None
    flag: str | None = None
    min_chars: int | None = None
    max_chars: int | None = None
    run_id: int | None = None

    def fields(self) -> Filter:
        """The queue as the shared filter: `all` states is no decision filter."""
        return Filter(
            decision=None if self.state == "all" else self.state,
            instruction_type=self.instruction_type,
            style=self.style,
            run_id=self.run_id,
            flag=self.flag,
            min_chars=self.min_chars,
            max_chars=self.max_chars,
        )

    def where(self) -> tuple[str, list[Param]]:
        """WHERE text over `generations g` alone (no joins: the next item is one index seek) and its parameters."""
        return where_sql(self.fields(), GENERATIONS_ONLY, "g.status = 'done'")


def record(store: Store, decisions: list[Decision], reviewer: str) -> str:
    """Append one reviewer action (one or more decisions) and commit it before returning."""
    action_id = uuid.uuid4().hex
    now = utc_now()
    with store.write() as conn:
        for d in decisions:
            if d.decision not in DECISIONS:
                raise ValueError(f"unknown decision {d.decision!r}")
            if d.reason is not None and d.decision != "reject":
                raise ValueError(f"a reason goes with a reject, not {d.decision!r}")
            conn.execute(
                """INSERT INTO reviews (generation_id, decision, edited_response, reviewer, created_at, action_id,
                                        reason)
                   VALUES (?, ?, ?, ?, ?, ?, ?)""",
                (d.generation_id, d.decision, d.edited_response, reviewer, now, action_id, d.reason),
            )
    return action_id


def undo_last(store: Store, reviewer: str) -> list[int]:
    """Cancel the reviewer's latest action that is not already cancelled; returns the generations it touched.

    Undo appends `undo` rows naming what they cancel (history stays); the database's triggers
    recompute each generation's current decision, so it works across restarts and for any number
    of levels. A row written by hand has no action id: it is its own action.
    """
    with store.write() as conn:
        row = conn.execute(
            f"SELECT id, action_id FROM reviews r WHERE reviewer = ? AND {IN_FORCE} ORDER BY id DESC LIMIT 1",
            (reviewer,),
        ).fetchone()
        if row is None:
            return []
        if row["action_id"] is None:
            targets = conn.execute("SELECT id, generation_id FROM reviews WHERE id = ?", (row["id"],)).fetchall()
        else:
            targets = conn.execute(
                f"SELECT id, generation_id FROM reviews r WHERE action_id = ? AND {IN_FORCE} ORDER BY id",
                (row["action_id"],),
            ).fetchall()
        now, undo_action = utc_now(), uuid.uuid4().hex
        for t in targets:
            conn.execute(
                """INSERT INTO reviews (generation_id, decision, reviewer, created_at, undoes_review_id, action_id)
                   VALUES (?, 'undo', ?, ?, ?, ?)""",
                (t["generation_id"], reviewer, now, t["id"], undo_action),
            )
        return [t["generation_id"] for t in targets]


def current_review(store: Store, generation_id: int) -> dict | None:
    row = store.conn.execute(
        "SELECT r.* FROM generations g JOIN reviews r ON r.id = g.review_id WHERE g.id = ?",
        (generation_id,),
    ).fetchone()
    return dict(row) if row else None


def neighbour(store: Store, queue: QueueFilter, after: int | None = None, before: int | None = None) -> int | None:
    """The next (or previous) generation id in the queue: one index seek, whatever the table's size."""
    where, params = queue.where()
    if before is not None:
        sql = f"SELECT g.id FROM generations g WHERE {where} AND g.id < ? ORDER BY g.id DESC LIMIT 1"
        params.append(before)
    else:
        sql = f"SELECT g.id FROM generations g WHERE {where} AND g.id > ? ORDER BY g.id LIMIT 1"
        params.append(after or 0)
    row = store.conn.execute(sql, params).fetchone()
    return row[0] if row else None


def counts(store: Store) -> dict[str, int]:
    """Done generations by current decision; `unreviewed` for those without one."""
    result = {"unreviewed": 0, "accept": 0, "reject": 0, "skip": 0}
    for decision, n in store.conn.execute(
        "SELECT decision, count(*) FROM generations WHERE status = 'done' GROUP BY decision"
    ):
        result[decision or "unreviewed"] = n
    return result
