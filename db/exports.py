"""The read side of export: accepted generations with everything a training record carries."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from gristmill.db.connection import Store
from gristmill.db.filters import WITH_REVIEW, Filter, Param, clauses, response_sql


@dataclass(frozen=True)
class ExportFilter:
    """Which reviewed generations an export (any format) takes. Every field narrows; None means any."""

    instruction_type: str | None = None
    style: str | None = None
    run_id: int | None = None
    reviewer: str | None = None
    min_chars: int | None = None  # bounds on the response as exported: the edited text where there is one
    max_chars: int | None = None
    exclude_flags: tuple[str, ...] = ()  # on unedited records; an edit's flags are the app's (export_notes)

    def fields(self) -> Filter:
        return Filter(
            instruction_type=self.instruction_type,
            style=self.style,
            run_id=self.run_id,
            reviewer=self.reviewer,
            min_chars=self.min_chars,
            max_chars=self.max_chars,
            exclude_flags=self.exclude_flags,
        )


# what an exported record's response is: the edit if any, else the completion
RESPONSE = response_sql(WITH_REVIEW)


def filter_clauses(where: ExportFilter) -> tuple[list[str], list[Param]]:
    """The export filters over aliases g (generation), i, r and rv (its review in force), finished ones only.

    Every export shape (accepted records here, labels and pairs in `training`) narrows through this one.
    """
    found, params = clauses(where.fields(), WITH_REVIEW)
    return ["g.status = 'done'", f"{RESPONSE} IS NOT NULL", *found], params


@contextmanager
def snapshot(store: Store) -> Iterator[None]:
    """One read transaction: every query inside sees the database as it was at the first one.

    In WAL mode a reader never blocks the review app's writes, and none of them shows up half-way
    through an export. Nothing is written, so it always ends with a rollback.
    """
    if store.conn.in_transaction:
        yield
        return
    store.conn.execute("BEGIN")
    try:
        yield
    finally:
        store.conn.execute("ROLLBACK")


def accepted(store: Store, where: ExportFilter, batch: int = 1000) -> Iterator[dict]:
    """Accepted generations in id order; `response` is the edited text if any."""
    for page in accepted_pages(store, where, batch):
        yield from page


def responses(store: Store, ids: list[int]) -> list[dict]:
    """`id`, `instruction`, `input` and `response` (edited text if any) of accepted generations, by id."""
    rows: list[dict] = []
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        rows.extend(
            dict(r)
            for r in store.conn.execute(
                f"""SELECT g.id, i.instruction, i.input, COALESCE(rv.edited_response, g.completion) AS response
                FROM generations g JOIN instructions i ON i.id = g.instruction_id
                JOIN reviews rv ON rv.id = g.review_id
                WHERE g.id IN ({",".join("?" * len(chunk))})""",
                chunk,
            )
        )
    return rows


NO_RUN_OR_INSTRUCTION = "whose run or instruction row is gone"


def not_exportable(store: Store) -> dict[str, int]:
    """Accepted generations no export can include, by why (the first reason that applies; only those that occur).
    Each is a row written by hand: SQLite does not enforce foreign keys unless asked, and nothing stops an accept
    on an unfinished or empty generation. The export's joins and filters cannot return them, so they are counted
    to be reported."""
    rows = store.conn.execute(
        f"""SELECT why, count(*) FROM (
            SELECT CASE
                WHEN NOT EXISTS (SELECT 1 FROM runs r WHERE r.id = g.run_id)
                  OR NOT EXISTS (SELECT 1 FROM instructions i WHERE i.id = g.instruction_id) THEN :gone
                WHEN g.status != 'done' THEN 'not finished (pending, refused or failed)'
                WHEN {RESPONSE} IS NULL THEN 'with no text (no completion and no edit)'
            END AS why
            FROM generations g LEFT JOIN reviews rv ON rv.id = g.review_id
            WHERE g.decision = 'accept')
        WHERE why IS NOT NULL GROUP BY why ORDER BY why""",
        {"gone": NO_RUN_OR_INSTRUCTION},
    ).fetchall()
    return {why: count for why, count in rows}


# the accepted generations every export reads, joined under the aliases `filter_clauses` expects
_ACCEPTED = """FROM generations g
        JOIN instructions i ON i.id = g.instruction_id
        JOIN runs r ON r.id = g.run_id
        JOIN reviews rv ON rv.id = g.review_id
        WHERE g.decision = 'accept'"""


def count_accepted(store: Store, where: ExportFilter = ExportFilter()) -> int:
    """How many accepted generations the filter's SQL part selects (the whole exportable set by default)."""
    found, params = filter_clauses(where)
    return store.conn.execute(f"SELECT count(*) {_ACCEPTED} AND {' AND '.join(found)}", params).fetchone()[0]


def accepted_pages(store: Store, where: ExportFilter, batch: int = 1000) -> Iterator[list[dict]]:
    """Accepted generations in id order, a page (list) at a time; `response` is the edited text if any."""
    found, params = filter_clauses(where)
    sql = f"""
        SELECT g.id, g.run_id, g.prompt, g.completion, g.prompt_tokens, g.completion_tokens,
               g.prompt_token_ids_sha256, g.finish_reason, g.flags, g.seed, g.style_meta,
               i.instruction, i.input, i.instruction_type, i.external_id,
               r.style, r.model, r.model_fingerprint, r.params, r.settings,
               rv.edited_response, rv.reviewer, rv.created_at AS reviewed_at,
               {RESPONSE} AS response
        {_ACCEPTED} AND {" AND ".join(found)} AND g.id > ? ORDER BY g.id LIMIT ?"""
    last = 0
    while True:
        rows = store.conn.execute(sql, (*params, last, batch)).fetchall()
        if not rows:
            return
        yield [dict(row) for row in rows]
        last = rows[-1]["id"]
