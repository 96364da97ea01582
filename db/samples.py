"""The samples of one instruction in one run, side by side: what the compare view and best-of-N read."""

from __future__ import annotations

from gristmill.db.connection import Store


def of_instruction(store: Store, generation_id: int) -> list[dict]:
    """Every sample (any status) of this generation's instruction in its run, by sample index.

    Pending, refused and failed samples are included: the number a reviewer presses is the sample's
    own index, so a sample that is not done must still hold its place.
    """
    return [
        dict(r)
        for r in store.conn.execute(
            """SELECT s.id, s.sample_index, s.status, s.completion, s.completion_tokens, s.finish_reason,
                  s.flags, s.error, s.decision, rv.edited_response
           FROM generations g JOIN generations s ON s.run_id = g.run_id AND s.instruction_id = g.instruction_id
           LEFT JOIN reviews rv ON rv.id = s.review_id
           WHERE g.id = ? ORDER BY s.sample_index""",
            (generation_id,),
        )
    ]


def last_edit(store: Store, generation_id: int) -> str | None:
    """The newest edited response in the review log for this generation, whether or not it is still in force."""
    row = store.conn.execute(
        "SELECT edited_response FROM reviews WHERE generation_id = ? AND edited_response IS NOT NULL "
        "ORDER BY id DESC LIMIT 1",
        (generation_id,),
    ).fetchone()
    return row[0] if row else None
