"""Generations: the work queue of (instruction × sample) rows and their results."""

from __future__ import annotations

import json
import os
import socket
import struct
import time
import uuid
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass

from gristmill.db.connection import Store, StoreError, utc_now

ENQUEUE_CHUNK = 2_000  # instructions per write transaction: another writer gets in between chunks
LEASE_S = 30 * 60.0  # a claim lapses after this, or at once when its process is gone (same host)


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
    refusal: str | None = None  # for status refused: "length" (a larger context fixes it) or "control"


def pack_token_ids(ids: Sequence[int] | None) -> bytes | None:
    """Token ids as little-endian uint32: 4 bytes a token, readable from any language (numpy: `<u4`)."""
    return None if ids is None else struct.pack(f"<{len(ids)}I", *ids)


def unpack_token_ids(blob: bytes | None, generation_id: object = "?") -> list[int] | None:
    if blob is None:
        return None
    if not isinstance(blob, bytes) or len(blob) % 4:
        raise StoreError(
            f"generations row {generation_id}: column completion_token_ids is not 4-byte token ids "
            f"({len(blob) if isinstance(blob, bytes) else type(blob).__name__} bytes): a hand edit? set it to NULL"
        )
    return list(struct.unpack(f"<{len(blob) // 4}I", blob))


def enqueue(
    store: Store,
    run_id: int,
    samples: int,
    seed_for: Callable[[str, int], int],
    types: Sequence[str] | None = None,
    chunk: int = ENQUEUE_CHUNK,
) -> int:
    """Add a pending row for every (instruction, sample) this run lacks. Returns rows added.

    The queue is known up front, so progress and ETA are exact; the UNIQUE constraint makes
    enqueueing idempotent, which is what makes resuming safe, and what lets it run in chunks:
    instructions are read a page at a time by id (never all at once) and each page is its own
    short transaction, so a million-instruction enqueue never holds the write lock for long.
    """
    where = ""
    type_params: list[object] = []
    if types:
        where = f" AND i.instruction_type IN ({','.join('?' * len(types))})"
        type_params = list(types)
    added, last_id = 0, 0
    while True:
        rows = store.conn.execute(
            f"""SELECT i.id, i.content_hash FROM instructions i
                WHERE i.id > ? {where}
                  AND (SELECT count(*) FROM generations g WHERE g.run_id = ? AND g.instruction_id = i.id) < ?
                ORDER BY i.id LIMIT ?""",
            (last_id, *type_params, run_id, int(samples), chunk),
        ).fetchall()
        if not rows:
            return added
        last_id = rows[-1][0]
        now = utc_now()
        values = [(r[0], run_id, k, seed_for(r[1], k), now) for r in rows for k in range(samples)]
        with store.write() as conn:
            cursor = conn.executemany(
                """INSERT OR IGNORE INTO generations (instruction_id, run_id, sample_index, status, seed, created_at)
                   VALUES (?, ?, ?, 'pending', ?, ?)""",
                values,
            )
            added += cursor.rowcount


def new_owner() -> str:
    """Who holds a claim: host and pid (so a dead process's claims lapse at once), and a nonce."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _owner_alive(owner: str) -> bool:
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return True  # another machine's process: only its lease tells
    return process_alive(int(pid_text))


def process_alive(pid: int) -> bool:
    """Whether a process of this machine still runs (another user's counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def claim(
    store: Store,
    run_id: int,
    owner: str,
    *,
    limit: int = 1,
    statuses: Sequence[str] = ("pending",),
    length_refused: bool = False,
    after_id: int = 0,
    lease_s: float = LEASE_S,
) -> list[WorkItem]:
    """Claim up to `limit` unclaimed items of the run, in id order after `after_id`, for `owner`.

    Two processes on one run never generate the same item: an item is claimed in a write transaction
    before it is generated, and released when its outcome is stored (`finish`). A claim lapses when its
    lease ends or its process no longer exists, so a killed generator's items are picked up by the next.
    `statuses` are the statuses to work on (pending; failed for --retry-failed); `length_refused` adds
    items refused because prompt plus max tokens exceeded the context (--retry-refused).
    """
    now = time.time()
    status_sql = f"g.status IN ({','.join('?' * len(statuses))})"
    if length_refused:
        status_sql = f"({status_sql} OR (g.status = 'refused' AND g.refusal = 'length'))"
    with store.write() as conn:
        for (other,) in conn.execute(
            "SELECT DISTINCT owner FROM claims WHERE run_id = ? AND owner != ?", (run_id, owner)
        ).fetchall():
            if not _owner_alive(other):
                conn.execute("DELETE FROM claims WHERE run_id = ? AND owner = ?", (run_id, other))
        conn.execute("DELETE FROM claims WHERE run_id = ? AND expires_at < ?", (run_id, now))
        conn.execute(
            "UPDATE claims SET expires_at = ? WHERE run_id = ? AND owner = ?", (now + lease_s, run_id, owner)
        )  # renew the claims this process still holds
        rows = conn.execute(
            f"""SELECT g.id, g.instruction_id, g.sample_index, g.seed, i.instruction, i.input,
                       i.instruction_type, i.content_hash
                FROM generations g JOIN instructions i ON i.id = g.instruction_id
                WHERE g.run_id = ? AND {status_sql} AND g.id > ?
                  AND NOT EXISTS (SELECT 1 FROM claims c WHERE c.generation_id = g.id)
                ORDER BY g.id LIMIT ?""",
            (run_id, *statuses, after_id, limit),
        ).fetchall()
        conn.executemany(
            "INSERT INTO claims (generation_id, run_id, owner, expires_at) VALUES (?, ?, ?, ?)",
            [(r["id"], run_id, owner, now + lease_s) for r in rows],
        )
    return [_work_item(r) for r in rows]


def claimed(
    store: Store,
    run_id: int,
    owner: str,
    *,
    statuses: Sequence[str] = ("pending",),
    length_refused: bool = False,
    batch: int = 1,
) -> Generator[WorkItem, None, None]:
    """Claim and yield work in id order, `batch` items per claim; an item another process holds is skipped.

    Whatever the caller leaves unprocessed (stopped, interrupted) is released when the generator closes.
    """
    last_id = 0
    held: list[int] = []  # claimed here and not yet known to be finished (releasing a finished one is a no-op)
    try:
        while True:
            items = claim(
                store, run_id, owner, limit=batch, statuses=statuses, length_refused=length_refused, after_id=last_id
            )
            if not items:
                # every item yielded was taken by the caller, who may still be generating it (a batch in
                # flight): its claims stay until `finish` (or the caller's own release) ends them
                held = []
                return
            held = [i.generation_id for i in items]
            for item in items:
                last_id = item.generation_id
                yield item
    finally:
        release(store, owner, held)


def release(store: Store, owner: str, generation_ids: Sequence[int] | None = None) -> None:
    """Give claims back without an outcome (None: every claim this owner holds)."""
    if generation_ids is not None and not generation_ids:
        return
    with store.write() as conn:
        if generation_ids is None:
            conn.execute("DELETE FROM claims WHERE owner = ?", (owner,))
        else:
            conn.executemany(
                "DELETE FROM claims WHERE generation_id = ? AND owner = ?", [(g, owner) for g in generation_ids]
            )


def pending(store: Store, run_id: int, *, retry_failed: bool = False, batch: int = 64) -> Iterator[WorkItem]:
    """Pending work in id order, read a page at a time so a huge queue is never held in memory."""
    statuses = ("pending", "failed") if retry_failed else ("pending",)
    last_id = 0
    while True:
        rows = store.conn.execute(
            f"""SELECT g.id, g.instruction_id, g.sample_index, g.seed, i.instruction, i.input,
                       i.instruction_type, i.content_hash
                FROM generations g JOIN instructions i ON i.id = g.instruction_id
                WHERE g.run_id = ? AND g.status IN ({",".join("?" * len(statuses))}) AND g.id > ?
                ORDER BY g.id LIMIT ?""",
            (run_id, *statuses, last_id, batch),
        ).fetchall()
        if not rows:
            return
        for r in rows:
            last_id = r["id"]
            yield _work_item(r)


def _work_item(row) -> WorkItem:
    """A work item from a row of the queue's select (generation, instruction and its fields)."""
    return WorkItem(
        row["id"],
        row["instruction_id"],
        row["sample_index"],
        row["seed"],
        row["instruction"],
        row["input"],
        row["instruction_type"],
        row["content_hash"],
    )


def finish(store: Store, generation_id: int, outcome: Outcome) -> None:
    """Commit one result in its own short transaction, the moment it exists, and release its claim.

    A done row is never overwritten (a lapsed claim's late result loses to the first one stored).
    """
    with store.write() as conn:
        conn.execute(
            """UPDATE generations SET status = ?, prompt = ?, prompt_tokens = ?,
                   prompt_token_ids_sha256 = ?, completion = ?, completion_tokens = ?,
                   finish_reason = ?, flags = ?, error = ?, style_meta = ?, timings = ?,
                   completion_token_ids = ?, finished_at = ?, refusal = ?
               WHERE id = ? AND status != 'done'""",
            (
                outcome.status,
                outcome.prompt,
                outcome.prompt_tokens,
                outcome.prompt_token_ids_sha256,
                outcome.completion,
                outcome.completion_tokens,
                outcome.finish_reason,
                json.dumps(list(outcome.flags)),
                outcome.error,
                json.dumps(outcome.style_meta or {}, ensure_ascii=False),
                json.dumps(outcome.timings or {}),
                pack_token_ids(outcome.completion_token_ids),
                utc_now(),
                outcome.refusal,
                generation_id,
            ),
        )
        conn.execute("DELETE FROM claims WHERE generation_id = ?", (generation_id,))


def length_refused_count(store: Store, run_id: int) -> int:
    """Items refused because prompt plus max tokens exceeded the context: what --retry-refused retries."""
    return store.conn.execute(
        "SELECT count(*) FROM generations WHERE run_id = ? AND status = 'refused' AND refusal = 'length'", (run_id,)
    ).fetchone()[0]


def pending_without_instruction(store: Store, run_id: int | None = None) -> int:
    """Pending generations whose instruction was deleted by hand: nothing can render their prompt, so they stay
    pending and the run never finishes."""
    where, params = ("AND g.run_id = ?", (run_id,)) if run_id is not None else ("", ())
    return store.conn.execute(
        f"""SELECT count(*) FROM generations g WHERE g.status = 'pending' {where}
            AND NOT EXISTS (SELECT 1 FROM instructions i WHERE i.id = g.instruction_id)""",
        params,
    ).fetchone()[0]


def held_elsewhere(store: Store, run_id: int) -> dict[str, int]:
    """Items of the run another live process holds (by owner, "host:pid"): a second generator on the run finds
    them taken, and its summary says why they are pending."""
    now = time.time()
    held: dict[str, int] = {}
    for owner, count in store.conn.execute(
        "SELECT owner, count(*) FROM claims WHERE run_id = ? AND expires_at >= ? GROUP BY owner", (run_id, now)
    ).fetchall():
        if _owner_alive(owner):
            process = ":".join(owner.split(":")[:2])
            held[process] = held.get(process, 0) + count
    return held


def flag_counts(store: Store, run_id: int, flags: tuple[str, ...]) -> dict[str, int]:
    """How many finished generations of the run carry each of `flags` (the rewrites a command must count)."""
    counts = dict.fromkeys(flags, 0)
    marks = ", ".join("?" * len(flags))
    for flag, n in store.conn.execute(
        f"""SELECT f.value, count(*) FROM generations g,
                  json_each(CASE WHEN json_valid(g.flags) THEN g.flags END) f  -- a hand edit never stops a summary
            WHERE g.run_id = ? AND g.status = 'done' AND f.value IN ({marks}) GROUP BY f.value""",
        (run_id, *flags),
    ):
        counts[flag] = n
    return counts


def status_counts(store: Store, run_id: int | None = None) -> dict[str, int]:
    where, params = ("WHERE run_id = ?", (run_id,)) if run_id is not None else ("", ())
    counts = {"pending": 0, "done": 0, "refused": 0, "failed": 0}
    for status, n in store.conn.execute(f"SELECT status, count(*) FROM generations {where} GROUP BY status", params):
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
    return [
        r[0]
        for r in store.conn.execute(
            """SELECT s.id FROM generations g JOIN generations s
             ON s.run_id = g.run_id AND s.instruction_id = g.instruction_id
           WHERE g.id = ? AND s.status = 'done' ORDER BY s.sample_index""",
            (generation_id,),
        )
    ]


def accepted_examples(store: Store, instruction_type: str, limit: int = 200) -> list[tuple[int, int, str, str, str]]:
    """Accepted (generation id, instruction id, instruction, input, response) of one type: reviewed data
    for few-shot pools. The instruction id lets a caller leave out the item's own instruction."""
    return [
        tuple(r)
        for r in store.conn.execute(
            """SELECT g.id, g.instruction_id, i.instruction, i.input, COALESCE(rv.edited_response, g.completion)
           FROM generations g JOIN instructions i ON i.id = g.instruction_id
           JOIN reviews rv ON rv.id = g.review_id
           WHERE g.decision = 'accept' AND i.instruction_type = ? ORDER BY g.id LIMIT ?""",
            (instruction_type, limit),
        )
    ]
