"""Review actions, shared by the review app and scripts: every decision is committed before returning."""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from gristmill.db import Store, open_store
from gristmill.db.connection import DatabaseBusy, QueryTooSlow, json_column
from gristmill.db import browse as browse_db
from gristmill.db import generations as generations_db
from gristmill.db import reviews as reviews_db
from gristmill.db import samples as samples_db
from gristmill.db.reviews import REVIEW_STATES, Decision, QueueFilter

# The app's screens reach storage only through this module (and the other pipeline modules).
__all__ = [
    "DatabaseBusy",
    "QueryTooSlow",
    "REVIEW_STATES",
    "QueueFilter",
    "ReviewItem",
    "Sample",
    "Pick",
    "Store",
    "open_database",
    "counts",
    "load_item",
    "samples_of",
    "position",
    "last_edit",
    "decide",
    "pick_best",
    "undo",
    "next_in_queue",
    "previous_in_queue",
    "unified_diff",
]


def open_database(path, *, migrate: bool = True) -> Store:
    """Open the database for the app (its own connection; a worker thread opens another)."""
    return open_store(path, migrate=migrate)


def counts(store: Store) -> dict[str, int]:
    """Done generations by current decision (`unreviewed` for none): the header's counts."""
    return reviews_db.counts(store)


@dataclass(frozen=True)
class ReviewItem:
    """One generation as a reviewer sees it."""

    generation_id: int
    instruction: str
    input: str
    instruction_type: str
    style: str
    prompt: str
    completion: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    flags: list[str]
    sample_index: int
    samples: int
    run_id: int
    decision: str | None
    edited_response: str | None
    reviewer: str | None

    @property
    def response(self) -> str:
        return self.edited_response if self.edited_response is not None else self.completion


def load_item(store: Store, generation_id: int) -> ReviewItem | None:
    row = generations_db.get(store, generation_id)
    if row is None:
        return None
    current = reviews_db.current_review(store, generation_id)
    return ReviewItem(
        generation_id=row["id"],
        instruction=row["instruction"],
        input=row["input"] or "",
        instruction_type=row["instruction_type"],
        style=row["style"],
        prompt=row["prompt"] or "",
        completion=row["completion"] or "",
        prompt_tokens=row["prompt_tokens"] or 0,
        completion_tokens=row["completion_tokens"] or 0,
        finish_reason=row["finish_reason"] or "",
        flags=json_column(row["flags"], "generations", "flags", row["id"], default="[]"),
        sample_index=row["sample_index"],
        samples=row["samples"],
        run_id=row["run_id"],
        decision=row["decision"],
        edited_response=current["edited_response"] if current else None,
        reviewer=current["reviewer"] if current else None,
    )


def decide(
    store: Store,
    generation_id: int,
    decision: str,
    reviewer: str,
    edited_response: str | None = None,
    reason: str | None = None,
) -> None:
    """Record one decision; `reason` (a reject's, e.g. "wrong") is stored on the review row."""
    reviews_db.record(store, [Decision(generation_id, decision, edited_response, reason)], reviewer)


@dataclass(frozen=True)
class Sample:
    """One sample of an instruction in a run, numbered as the screen shows it (sample_index + 1)."""

    generation_id: int
    number: int
    status: str
    text: str
    completion_tokens: int
    finish_reason: str
    flags: list[str]
    decision: str | None
    edited: bool
    error: str | None


def samples_of(store: Store, generation_id: int) -> list[Sample]:
    """All samples of this generation's instruction in its run, whatever their status, by number."""
    return [
        Sample(
            generation_id=r["id"],
            number=r["sample_index"] + 1,
            status=r["status"],
            text=r["edited_response"] if r["edited_response"] is not None else (r["completion"] or ""),
            completion_tokens=r["completion_tokens"] or 0,
            finish_reason=r["finish_reason"] or "",
            flags=json_column(r["flags"], "generations", "flags", r["id"], default="[]"),
            decision=r["decision"],
            edited=r["edited_response"] is not None,
            error=r["error"],
        )
        for r in samples_db.of_instruction(store, generation_id)
    ]


@dataclass(frozen=True)
class Pick:
    """What a best-of-N key press did: the accepted generation and the rejected ones, or why nothing."""

    chosen: int | None
    rejected: tuple[int, ...] = ()
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.chosen is not None


def pick_best(store: Store, generation_id: int, k: int, reviewer: str) -> Pick:
    """Best-of-N: accept sample k (the number the screen shows), reject every other sample, as one action.

    The number is the sample's own index, whatever state the others are in. A pick never leaves two
    accepts for one instruction in a run: every other sample that has finished (done, refused or
    failed, since a failed one may be retried later) is rejected in the same action, so one undo
    reverts the whole pick; while a sample is still pending the pick is refused with a message.
    An edit already made to the chosen sample is kept.
    """
    samples = samples_of(store, generation_id)
    chosen = next((s for s in samples if s.number == k), None)
    if chosen is None:
        return Pick(None, message=f"This instruction has no sample {k} (it has {len(samples)})")
    if chosen.status != "done":
        return Pick(None, message=f"Sample {k} is {chosen.status}: there is no text to accept")
    pending = [str(s.number) for s in samples if s.status == "pending"]
    if pending:
        return Pick(
            None,
            message=f"Sample {', '.join(pending)} not generated yet: pick again once "
            f"{'it has' if len(pending) == 1 else 'they have'} finished",
        )
    others = tuple(s.generation_id for s in samples if s is not chosen)
    edit = None
    if chosen.decision == "accept" and chosen.edited:
        edit = chosen.text
    reviews_db.record(
        store, [Decision(chosen.generation_id, "accept", edit)] + [Decision(g, "reject") for g in others], reviewer
    )
    return Pick(
        chosen.generation_id,
        others,
        f"Accepted sample {k} (#{chosen.generation_id})" + (f"; rejected {len(others)} other(s)" if others else ""),
    )


def undo(store: Store, reviewer: str) -> list[int]:
    return reviews_db.undo_last(store, reviewer)


def next_in_queue(store: Store, queue: QueueFilter, after: int | None = None) -> int | None:
    return reviews_db.neighbour(store, queue, after=after)


def previous_in_queue(store: Store, queue: QueueFilter, before: int) -> int | None:
    return reviews_db.neighbour(store, queue, before=before)


def last_edit(store: Store, generation_id: int) -> str | None:
    """The latest edited text written for this generation, even one an undo cancelled (so it is never lost)."""
    return samples_db.last_edit(store, generation_id)


def position(store: Store, queue: QueueFilter, generation_id: int, total: int | None = None) -> tuple[int, int]:
    """(1-based position of this generation in the queue, or 0 if it is not in it; queue length).

    The position is an index range count (cheap when the items before it were decided); the length
    counts the whole queue, so a caller that knows it passes `total`.
    """
    where, params = queue.where()
    if total is None:
        total = browse_db.count_where(store, where, params)
    inside = browse_db.count_where(store, where + " AND g.id = ?", [*params, generation_id])
    return (browse_db.position(store, where, params, generation_id) if inside else 0), total


def unified_diff(original: str, edited: str) -> str:
    lines = difflib.unified_diff(original.splitlines(), edited.splitlines(), "model output", "edited", lineterm="")
    return "\n".join(lines) or "(no differences)"
