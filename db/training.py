"""The read side of the training shapes: labeled generations (kto), preference pairs (dpo), and what a
prompt-completion or tokens record needs beyond `exports.accepted` (how it was decided, its sampled ids).

Everything is derived from the `reviews` log as it stands: a decision an `undo` cancelled counts for
nothing, so an undone best-of-N pick yields no pair.
"""

from __future__ import annotations

from collections.abc import Iterator

from gristmill.db.connection import Store
from gristmill.db.exports import RESPONSE, ExportFilter, filter_clauses
from gristmill.db.reviews import IN_FORCE

# the columns every training row carries (the same names `exports.accepted` gives)
_ROW = """g.id, g.run_id, g.prompt, g.completion, g.completion_tokens, g.flags, g.completion_token_ids,
          i.instruction, i.input, i.instruction_type,
          r.style, r.model, r.model_fingerprint, r.params, r.settings,
          rv.edited_response, rv.reviewer, rv.reason, rv.created_at AS reviewed_at"""
# a review row that is part of a best-of-N pick: its action also rejected a sibling
_IS_PICK = """(rv.action_id IS NOT NULL AND EXISTS (SELECT 1 FROM reviews o WHERE o.action_id = rv.action_id
                AND o.id != rv.id AND o.decision = 'reject'))"""


def labeled(store: Store, where: ExportFilter, reasons: tuple[str, ...] = ()) -> Iterator[dict]:
    """Accepted and rejected generations in id order (kto), with the decision's kind and a reject's reason.

    `reasons` narrows the rejects to those reasons ("none": a reject given without one); accepts stay.
    """
    clauses, params = filter_clauses(where)
    clauses.append("g.decision IN ('accept', 'reject')")
    if reasons:
        named = [r for r in reasons if r != "none"]
        allowed = [f"rv.reason IN ({','.join('?' * len(named))})"] if named else []
        if "none" in reasons:
            allowed.append("rv.reason IS NULL")
        clauses.append(f"(g.decision = 'accept' OR {' OR '.join(allowed)})")
        params += named
    sql = f"""
        SELECT {_ROW}, g.decision, {_IS_PICK} AS is_pick, {RESPONSE} AS response
        FROM generations g
        JOIN instructions i ON i.id = g.instruction_id
        JOIN runs r ON r.id = g.run_id
        JOIN reviews rv ON rv.id = g.review_id
        WHERE {" AND ".join(clauses)} ORDER BY g.id"""
    for row in store.conn.execute(sql, params):
        yield dict(row)


def pairs(store: Store, where: ExportFilter) -> Iterator[dict]:
    """Preference pairs (dpo), ordered by chosen id, then kind, then rejected id.

    - pick: a best-of-N action in force (not undone) accepted `id` and rejected `rejected_id`, and both
      still stand (chosen accepted, rejected rejected); `response` is the chosen's current text (an
      edit made later included). The same pick recorded twice is one pair.
    - edit: `id` is accepted with an edited text; `rejected_response` is the model's own completion.

    Filters apply to the chosen generation and its review. A side with no text (a NULL completion, written by
    hand) makes no pair: a pair against nothing would teach nothing.
    """
    clauses, params = filter_clauses(where)
    filters = " AND ".join(clauses)
    sql = f"""
        SELECT * FROM (
        SELECT {_ROW}, 'pick' AS kind, s.id AS rejected_id, {RESPONSE} AS response,
               s.completion AS rejected_response
        FROM reviews pa
        JOIN generations g ON g.id = pa.generation_id AND g.decision = 'accept'
        JOIN reviews rv ON rv.id = g.review_id
        JOIN reviews pr ON pr.action_id = pa.action_id AND pr.decision = 'reject'
        JOIN generations s ON s.id = pr.generation_id AND s.decision = 'reject' AND s.status = 'done'
                           AND s.completion IS NOT NULL
        JOIN instructions i ON i.id = g.instruction_id
        JOIN runs r ON r.id = g.run_id
        WHERE pa.decision = 'accept' AND pa.action_id IS NOT NULL
          AND EXISTS (SELECT 1 FROM reviews r WHERE r.id = pa.id AND {IN_FORCE})
          AND EXISTS (SELECT 1 FROM reviews r WHERE r.id = pr.id AND {IN_FORCE})
          AND {filters}
        GROUP BY g.id, s.id
        UNION ALL
        SELECT {_ROW}, 'edit' AS kind, g.id AS rejected_id, rv.edited_response AS response,
               g.completion AS rejected_response
        FROM generations g
        JOIN instructions i ON i.id = g.instruction_id
        JOIN runs r ON r.id = g.run_id
        JOIN reviews rv ON rv.id = g.review_id
        WHERE g.decision = 'accept' AND rv.edited_response IS NOT NULL AND g.completion IS NOT NULL AND {filters})
        ORDER BY id, kind DESC, rejected_id"""
    for row in store.conn.execute(sql, [*params, *params]):
        yield dict(row)


def accepted_extras(store: Store, generation_id: int) -> tuple[bool, bytes | None]:
    """For an accepted generation: whether a best-of-N pick accepted it, and its stored sampled ids."""
    row = store.conn.execute(
        f"""SELECT {_IS_PICK}, g.completion_token_ids FROM generations g JOIN reviews rv ON rv.id = g.review_id
            WHERE g.id = ?""",
        (generation_id,),
    ).fetchone()
    return (bool(row[0]), row[1]) if row else (False, None)
