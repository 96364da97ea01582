"""The numbers behind the stats room and `gristmill stats --json`: acceptance by group, lengths, throughput.

Every query groups done generations by their current decision (the cache the review log keeps);
acceptance is accepted / (accepted + rejected): skips and unreviewed items are not a verdict.
"""

from __future__ import annotations

from gristmill.db.connection import Store

GROUPS = {  # name -> (SQL expression for the group key, extra JOIN)
    "type": ("i.instruction_type", "JOIN instructions i ON i.id = g.instruction_id"),
    "style": (
        "r.style || CASE WHEN json_extract(r.settings, '$.pool') = 'accepted' THEN ' (accepted pool)' ELSE '' END",
        "JOIN runs r ON r.id = g.run_id",
    ),
    "reviewer": ("rv.reviewer", "JOIN reviews rv ON rv.id = g.review_id"),
    "run": ("g.run_id", ""),
}


def acceptance(store: Store, group: str) -> dict[str, dict[str, int]]:
    """{group value: {accept, reject, skip}} over decided generations."""
    key, join = GROUPS[group]
    result: dict[str, dict[str, int]] = {}
    for value, decision, n in store.conn.execute(
        f"""SELECT {key}, g.decision, count(*) FROM generations g {join}
                WHERE g.status = 'done' AND g.decision IS NOT NULL GROUP BY 1, 2 ORDER BY 1"""
    ):
        result.setdefault(str(value), {"accept": 0, "reject": 0, "skip": 0})[decision] = n
    return result


def acceptance_by_flag(store: Store) -> dict[str, dict[str, int]]:
    result: dict[str, dict[str, int]] = {}
    for flag, decision, n in store.conn.execute(
        """SELECT CASE WHEN g.flags IN ('[]', '') THEN '(none)' ELSE f.value END, g.decision, count(*)
               FROM generations g LEFT JOIN json_each(CASE WHEN g.flags IN ('[]', '') THEN NULL ELSE g.flags END) f
               WHERE g.status = 'done' AND g.decision IS NOT NULL GROUP BY 1, 2 ORDER BY 1"""
    ):
        result.setdefault(str(flag), {"accept": 0, "reject": 0, "skip": 0})[decision] = n
    return result


def response_lengths(store: Store, bins: int = 20) -> dict:
    """Histogram of response lengths (characters, the edited text where there is one), accepted vs rejected."""
    longest = (
        store.conn.execute(
            """SELECT max(length(COALESCE(rv.edited_response, g.completion))) FROM generations g
           LEFT JOIN reviews rv ON rv.id = g.review_id
           WHERE g.status = 'done' AND g.decision IN ('accept', 'reject')"""
        ).fetchone()[0]
        or 0
    )
    width = max(1, -(-(longest + 1) // bins))
    counts = {"accept": [0] * bins, "reject": [0] * bins}
    for decision, bucket, n in store.conn.execute(
        f"""SELECT g.decision, min(length(COALESCE(rv.edited_response, g.completion)) / {width}, {bins - 1}),
                       count(*)
                FROM generations g LEFT JOIN reviews rv ON rv.id = g.review_id
                WHERE g.status = 'done' AND g.decision IN ('accept', 'reject')
                  AND COALESCE(rv.edited_response, g.completion) IS NOT NULL GROUP BY 1, 2"""
    ):
        counts[decision][bucket] = n
    return {"bin_chars": width, "bins": [i * width for i in range(bins)], **counts}


def throughput(store: Store, run_id: int | None = None) -> dict:
    """Generations finished and tokens written per minute over one run (default: the latest)."""
    if run_id is None:
        row = store.conn.execute("SELECT max(id) FROM runs").fetchone()
        run_id = row[0] if row else None
    if run_id is None:
        return {"run_id": None, "minutes": [], "generations": [], "tokens": []}
    rows = store.conn.execute(
        """SELECT substr(finished_at, 1, 16), count(*), COALESCE(sum(completion_tokens), 0) FROM generations
           WHERE run_id = ? AND finished_at IS NOT NULL GROUP BY 1 ORDER BY 1""",
        (run_id,),
    ).fetchall()
    return {
        "run_id": run_id,
        "minutes": [r[0] for r in rows],
        "generations": [r[1] for r in rows],
        "tokens": [r[2] for r in rows],
    }
