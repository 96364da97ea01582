"""Browse and search: one page of generations at a time, filtered, sorted, full-text searched (FTS5).

Never the whole table: a page is one LIMIT query, the count is a separate query a caller runs off
the UI thread, and a search is driven by the FTS5 index in rowid order, so the first page of a
search costs the same on a million rows as on a thousand.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from gristmill.db import filters
from gristmill.db.connection import Store
from gristmill.db.filters import UNREVIEWED as UNREVIEWED  # the browse dialog's "no decision" (app.browse)
from gristmill.db.filters import Filter, Param

SORTS = {  # column key -> SQL expression (ties broken by id)
    "id": "g.id",
    "run": "g.run_id",
    "status": "g.status",
    "decision": "COALESCE(g.decision, '')",
    "type": "i.instruction_type",
    "style": "r.style",
    "chars": "length(g.completion)",
    "tokens": "g.completion_tokens",
}


@dataclass(frozen=True)
class BrowseFilter:
    """Every field narrows the set; None means any."""

    status: str | None = None
    decision: str | None = None  # accept, reject, skip, or "unreviewed"
    instruction_type: str | None = None
    style: str | None = None
    flag: str | None = None
    reviewer: str | None = None
    run_id: int | None = None
    min_chars: int | None = None
    max_chars: int | None = None
    search: str | None = None  # words, all of which must occur in the instruction, input or output

    def describe(self) -> str:
        parts = [
            f"{name}={value}"
            for name, value in (
                ("status", self.status),
                ("decision", self.decision),
                ("type", self.instruction_type),
                ("style", self.style),
                ("flag", self.flag),
                ("reviewer", self.reviewer),
                ("run", self.run_id),
                ("min", self.min_chars),
                ("max", self.max_chars),
            )
            if value not in (None, "")
        ]
        if self.search:
            parts.insert(0, f"search '{self.search}'")
        return ", ".join(parts) or "everything"

    def fields(self) -> Filter:
        """Everything but the search, as the shared filter (the search drives the query: see `_from`)."""
        return Filter(
            status=self.status,
            decision=self.decision or None,  # a cleared decision box means any
            instruction_type=self.instruction_type,
            style=self.style,
            run_id=self.run_id,
            reviewer=self.reviewer,
            flag=self.flag,
            min_chars=self.min_chars,
            max_chars=self.max_chars,
        )


@dataclass(frozen=True)
class Sort:
    column: str = "id"
    descending: bool = False


@dataclass(frozen=True)
class BrowseRow:
    generation_id: int
    run_id: int
    sample: int
    status: str
    decision: str | None
    instruction_type: str
    style: str
    chars: int
    instruction: str
    output: str


@dataclass(frozen=True)
class Page:
    rows: list[BrowseRow] = field(default_factory=list)
    offset: int = 0


def match_expression(text: str) -> str | None:
    """User words as an FTS5 query: each word a quoted phrase (no FTS syntax errors), `word*` a prefix.

    A one-character prefix would merge the doclists of every term starting with it (slow on a million
    rows), so `7*` searches for the word `7`; prefixes of two characters or more use the prefix index.
    """
    terms = []
    for word in re.findall(r"[^\s\"]+", text):
        word = word.rstrip("*") if len(word.rstrip("*")) < 2 else word
        prefix = word.endswith("*")
        word = word.rstrip("*")
        if word:
            terms.append('"' + word.replace('"', '""') + '"' + ("*" if prefix else ""))
    return " ".join(terms) or None


def _from(where: BrowseFilter, sort: Sort) -> tuple[str, list[str], list[Param], str]:
    """FROM clause, WHERE clauses, parameters and ORDER BY; a search drives the query from the index."""
    clauses, params = filters.clauses(where.fields(), filters.WITH_INSTRUCTION_AND_RUN)
    direction = "DESC" if sort.descending else "ASC"
    joins = "JOIN instructions i ON i.id = g.instruction_id JOIN runs r ON r.id = g.run_id"
    match = match_expression(where.search or "")
    if match:
        source = f"search_index s JOIN generations g ON g.id = s.rowid {joins}"
        clauses.insert(0, "search_index MATCH ?")
        params.insert(0, match)
        id_order = f"s.rowid {direction}"  # FTS5 returns rowids in order: a LIMIT stops early
    else:
        source = f"generations g {joins}"
        id_order = f"g.id {direction}"
    order = id_order if sort.column == "id" else f"{SORTS[sort.column]} {direction}, {id_order}"
    return source, clauses, params, order


def page(store: Store, where: BrowseFilter, sort: Sort = Sort(), offset: int = 0, limit: int = 50) -> Page:
    source, clauses, params, order = _from(where, sort)
    sql = f"""SELECT g.id, g.run_id, g.sample_index, g.status, g.decision, i.instruction_type, r.style,
                     COALESCE(length(g.completion), 0) AS chars, substr(i.instruction, 1, 200) AS instruction,
                     substr(COALESCE(g.completion, ''), 1, 200) AS output
              FROM {source} WHERE {" AND ".join(clauses) or "1"} ORDER BY {order} LIMIT ? OFFSET ?"""
    rows = store.conn.execute(sql, (*params, limit, offset)).fetchall()
    return Page([BrowseRow(*tuple(r)) for r in rows], offset)


def count(store: Store, where: BrowseFilter) -> int:
    source, clauses, params, _ = _from(where, Sort())
    if not clauses:
        return store.conn.execute("SELECT count(*) FROM generations").fetchone()[0]
    return store.conn.execute(f"SELECT count(*) FROM {source} WHERE {' AND '.join(clauses)}", params).fetchone()[0]


def done_ids(store: Store, where: BrowseFilter) -> list[int]:
    """Ids of the finished (status done) generations in the set: what a bulk decision applies to."""
    source, clauses, params, _ = _from(where, Sort())
    clauses.append("g.status = 'done'")
    return [
        r[0]
        for r in store.conn.execute(f"SELECT g.id FROM {source} WHERE {' AND '.join(clauses)} ORDER BY g.id", params)
    ]


def choices(store: Store) -> dict[str, list]:
    """Known values for the filter dialogs: types, styles, runs, reviewers."""

    def column(sql: str) -> list:
        return [r[0] for r in store.conn.execute(sql)]

    return {
        "types": column("SELECT DISTINCT instruction_type FROM instructions ORDER BY 1"),
        "styles": column("SELECT DISTINCT style FROM runs ORDER BY 1"),
        "runs": [
            (r[0], f"{r[0]} · {r[1]} · {r[2]}")
            for r in store.conn.execute("SELECT id, style, model FROM runs ORDER BY id")
        ],
        "reviewers": column("SELECT DISTINCT reviewer FROM reviews ORDER BY 1"),
    }


def position(store: Store, where_sql: str, params: list[Param], generation_id: int) -> int:
    """1-based position of a generation among those matching a review-queue WHERE clause (by id)."""
    return store.conn.execute(
        f"SELECT count(*) FROM generations g WHERE {where_sql} AND g.id <= ?", (*params, generation_id)
    ).fetchone()[0]


def count_where(store: Store, where_sql: str, params: list[Param]) -> int:
    """How many generations match a review-queue WHERE clause."""
    return store.conn.execute(f"SELECT count(*) FROM generations g WHERE {where_sql}", params).fetchone()[0]
