"""Generations: the work queue of (instruction × sample) rows and their results."""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from gristmill.db.connection import Store, utc_now


@dataclass(frozen=True)
class WorkItem:
    """A pending generation with the instruction it answers."""

    generation_id: int
    instruction_id: int
    sample_index: int
    seed: int
    instruction: str
    input: str
    instruction_type: str
    content_hash: str


@dataclass(frozen=True)
class Outcome:
    """What one finished work item stores; status is done, refused or failed."""

    status: str
    prompt: str | None = None
    prompt_tokens: int | None = None
    prompt_token_ids_sha256: str | None = None
    completion: str | None = None
    completion_tokens: int | None = None
    finish_reason: str | None = None
    flags: tuple[str, ...] = ()
    error: str | None = None
    style_meta: dict | None = None
    timings: dict | None = None
    completion_token_ids: tuple[int, ...] | None = None  # the sampled ids, stop-string tokens included


def pack_token_ids(ids: Sequence[int] | None) -> bytes | None:
    """Token ids as little-endian uint32: 4 bytes a token, readable from any language (numpy: `<u4`)."""
    return None if ids is None else struct.pack(f"<{len(ids)}I", *ids)


def unpack_token_ids(blob: bytes | None) -> list[int] | None:
    if blob is None:
        return None
    return list(struct.unpack(f"<{len(blob) // 4}I", blob))


def enqueue(store: Store, run_id: int, samples: int, seed_for: Callable[[str, int], int],
            types: list[str] | None = None) -> int:
    """Add a pending row for every (instruction, sample) this run lacks. Returns rows added.

    The queue is known up front, so progress and ETA are exact; the UNIQUE constraint makes
    enqueueing idempotent, which is what makes resuming safe.
    """
    where = ""
    params: list[object] = [run_id]
    if types:
        where = f" AND i.instruction_type IN ({','.join('?' * len(types))})"
        params += types
    rows = store.conn.execute(
        f"""SELECT i.id, i.content_hash, COUNT(g.id) AS have FROM instructions i
            LEFT JOIN generations g ON g.instruction_id = i.id AND g.run_id = ?
            WHERE 1 {where} GROUP BY i.id HAVING have < {int(samples)} ORDER BY i.id""",
        params,
    ).fetchall()
    now = utc_now()
    added = 0
    with store.write() as conn:
        for row in rows:
            cursor = conn.executemany(
                """INSERT OR IGNORE INTO generations
                   (instruction_id, run_id, sample_index, status, seed, created_at)
                   VALUES (?, ?, ?, 'pending', ?, ?)""",
                [(row["id"], run_id, k, seed_for(row["content_hash"], k), now) for k in range(samples)],
            )
            added += cursor.rowcount
    return added


def pending(store: Store, run_id: int, *, retry_failed: bool = False, batch: int = 64) -> Iterator[WorkItem]:
    """Pending work in id order, read a page at a time so a huge queue is never held in memory."""
    statuses = ("pending", "failed") if retry_failed else ("pending",)
    last_id = 0
    while True:
        rows = store.conn.execute(
            f"""SELECT g.id, g.instruction_id, g.sample_index, g.seed, i.instruction, i.input,
                       i.instruction_type, i.content_hash
                FROM generations g JOIN instructions i ON i.id = g.instruction_id
                WHERE g.run_id = ? AND g.status IN ({','.join('?' * len(statuses))}) AND g.id > ?
                ORDER BY g.id LIMIT ?""",
            (run_id, *statuses, last_id, batch),
        ).fetchall()
        if not rows:
            return
        for r in rows:
            last_id = r["id"]
            yield WorkItem(r["id"], r["instruction_id"], r["sample_index"], r["seed"],
                           r["instruction"], r["input"], r["instruction_type"], r["content_hash"])


def finish(store: Store, generation_id: int, outcome: Outcome) -> None:
    """Commit one result in its own short transaction, the moment it exists."""
    with store.write() as conn:
        conn.execute(
            """UPDATE generations SET status = ?, prompt = ?, prompt_tokens = ?,
                   prompt_token_ids_sha256 = ?, completion = ?, completion_tokens = ?,
                   finish_reason = ?, flags = ?, error = ?, style_meta = ?, timings = ?,
                   completion_token_ids = ?, finished_at = ?
               WHERE id = ? AND status IN ('pending', 'failed')""",
            (outcome.status, outcome.prompt, outcome.prompt_tokens, outcome.prompt_token_ids_sha256,
             outcome.completion, outcome.completion_tokens, outcome.finish_reason,
             json.dumps(list(outcome.flags)), outcome.error,
             json.dumps(outcome.style_meta or {}, ensure_ascii=False),
             json.dumps(outcome.timings or {}), pack_token_ids(outcome.completion_token_ids), utc_now(),
             generation_id),
        )


def status_counts(store: Store, run_id: int | None = None) -> dict[str, int]:
    where, params = ("WHERE run_id = ?", (run_id,)) if run_id is not None else ("", ())
    counts = {"pending": 0, "done": 0, "refused": 0, "failed": 0}
    for status, n in store.conn.execute(
        f"SELECT status, count(*) FROM generations {where} GROUP BY status", params
    ):
        counts[status] = n
    return counts


def get(store: Store, generation_id: int) -> dict | None:
    row = store.conn.execute(
        """SELECT g.*, i.instruction, i.input, i.instruction_type, r.style, r.samples
           FROM generations g JOIN instructions i ON i.id = g.instruction_id
           JOIN runs r ON r.id = g.run_id WHERE g.id = ?""",
        (generation_id,),
    ).fetchone()
    return dict(row) if row else None


def siblings(store: Store, generation_id: int) -> list[int]:
    """Ids of the samples of the same instruction in the same run, by sample index (best-of-N)."""
    return [r[0] for r in store.conn.execute(
        """SELECT s.id FROM generations g JOIN generations s
             ON s.run_id = g.run_id AND s.instruction_id = g.instruction_id
           WHERE g.id = ? AND s.status = 'done' ORDER BY s.sample_index""",
        (generation_id,),
    )]


def accepted_examples(store: Store, instruction_type: str, limit: int = 200) -> list[tuple[int, int, str, str, str]]:
    """Accepted (generation id, instruction id, instruction, input, response) of one type: reviewed data
    for few-shot pools. The instruction id lets a caller leave out the item's own instruction."""
    return [tuple(r) for r in store.conn.execute(
        """SELECT g.id, g.instruction_id, i.instruction, i.input, COALESCE(rv.edited_response, g.completion)
           FROM generations g JOIN instructions i ON i.id = g.instruction_id
           JOIN reviews rv ON rv.id = g.review_id
           WHERE g.decision = 'accept' AND i.instruction_type = ? ORDER BY g.id LIMIT ?""",
        (instruction_type, limit),
    )]
