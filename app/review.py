"""Review actions, shared by the review app and scripts: every decision is committed before returning."""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass

from gristmill.db import Store
from gristmill.db import generations as generations_db
from gristmill.db import reviews as reviews_db
from gristmill.db.reviews import Decision, QueueFilter


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
        generation_id=row["id"], instruction=row["instruction"], input=row["input"] or "",
        instruction_type=row["instruction_type"], style=row["style"], prompt=row["prompt"] or "",
        completion=row["completion"] or "", prompt_tokens=row["prompt_tokens"] or 0,
        completion_tokens=row["completion_tokens"] or 0, finish_reason=row["finish_reason"] or "",
        flags=json.loads(row["flags"] or "[]"), sample_index=row["sample_index"], samples=row["samples"],
        run_id=row["run_id"], decision=row["decision"],
        edited_response=current["edited_response"] if current else None,
        reviewer=current["reviewer"] if current else None,
    )


def decide(store: Store, generation_id: int, decision: str, reviewer: str, edited_response: str | None = None,
           reason: str | None = None) -> None:
    """Record one decision; `reason` (a reject's, e.g. "wrong") is stored on the review row."""
    reviews_db.record(store, [Decision(generation_id, decision, edited_response, reason)], reviewer)


def pick_best(store: Store, generation_id: int, k: int, reviewer: str) -> int | None:
    """Best-of-N: accept sample k (1-based) of this instruction's samples, reject its siblings, as one action."""
    siblings = generations_db.siblings(store, generation_id)
    if not 1 <= k <= len(siblings):
        return None
    chosen = siblings[k - 1]
    reviews_db.record(store, [Decision(g, "accept" if g == chosen else "reject") for g in siblings], reviewer)
    return chosen


def undo(store: Store, reviewer: str) -> list[int]:
    return reviews_db.undo_last(store, reviewer)


def next_in_queue(store: Store, queue: QueueFilter, after: int | None = None) -> int | None:
    return reviews_db.neighbour(store, queue, after=after)


def previous_in_queue(store: Store, queue: QueueFilter, before: int) -> int | None:
    return reviews_db.neighbour(store, queue, before=before)


def unified_diff(original: str, edited: str) -> str:
    lines = difflib.unified_diff(original.splitlines(), edited.splitlines(), "model output", "edited", lineterm="")
    return "\n".join(lines) or "(no differences)"
