"""The read side of export: accepted generations with everything a training record carries."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from gristmill.db.connection import Store


@dataclass(frozen=True)
class ExportFilter:
    instruction_type: str | None = None
    style: str | None = None
    run_id: int | None = None
    reviewer: str | None = None
    min_chars: int | None = None
    max_chars: int | None = None
    exclude_flags: tuple[str, ...] = ()


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


def accepted_pages(store: Store, where: ExportFilter, batch: int = 1000) -> Iterator[list[dict]]:
    """Accepted generations in id order, a page (list) at a time; `response` is the edited text if any."""
    clauses: list[str] = ["g.decision = 'accept'", "g.status = 'done'"]
    params: list[object] = []
    if where.instruction_type:
        clauses.append("i.instruction_type = ?")
        params.append(where.instruction_type)
    if where.style:
        clauses.append("r.style = ?")
        params.append(where.style)
    if where.run_id is not None:
        clauses.append("g.run_id = ?")
        params.append(where.run_id)
    if where.reviewer:
        clauses.append("rv.reviewer = ?")
        params.append(where.reviewer)
    response = "COALESCE(rv.edited_response, g.completion)"
    if where.min_chars is not None:
        clauses.append(f"length({response}) >= ?")
        params.append(where.min_chars)
    if where.max_chars is not None:
        clauses.append(f"length({response}) <= ?")
        params.append(where.max_chars)
    for flag in where.exclude_flags:
        clauses.append("NOT EXISTS (SELECT 1 FROM json_each(g.flags) WHERE value = ?)")
        params.append(flag)
    sql = f"""
        SELECT g.id, g.run_id, g.prompt, g.completion, g.prompt_tokens, g.completion_tokens,
               g.prompt_token_ids_sha256, g.finish_reason, g.flags, g.seed, g.style_meta,
               i.instruction, i.input, i.instruction_type, i.external_id,
               r.style, r.model, r.model_fingerprint, r.params, r.settings,
               rv.edited_response, rv.reviewer, rv.created_at AS reviewed_at,
               {response} AS response
        FROM generations g
        JOIN instructions i ON i.id = g.instruction_id
        JOIN runs r ON r.id = g.run_id
        JOIN reviews rv ON rv.id = g.review_id
        WHERE {" AND ".join(clauses)} AND g.id > ? ORDER BY g.id LIMIT ?"""
    last = 0
    while True:
        rows = store.conn.execute(sql, (*params, last, batch)).fetchall()
        if not rows:
            return
        yield [dict(row) for row in rows]
        last = rows[-1]["id"]
