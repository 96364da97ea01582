"""Browse, search and bulk decisions: the pipeline the app's browse room and scripts share."""

from __future__ import annotations

from gristmill.app.flags import ALL_FLAGS
from gristmill.db import Store
from gristmill.db import browse as browse_db
from gristmill.db import reviews as reviews_db
from gristmill.db.browse import SORTS, UNREVIEWED, BrowseFilter, BrowseRow, Page, Sort
from gristmill.db.reviews import Decision

__all__ = [
    "SORTS",
    "UNREVIEWED",
    "STATUSES",
    "DECISIONS",
    "FLAGS",
    "BrowseFilter",
    "BrowseRow",
    "Page",
    "Sort",
    "page",
    "count",
    "bulk_decide",
    "choices",
    "matching_ids",
]

STATUSES = ("pending", "done", "refused", "failed")
DECISIONS = (UNREVIEWED, "accept", "reject", "skip")
FLAGS = tuple(ALL_FLAGS)


def page(store: Store, where: BrowseFilter, sort: Sort = Sort(), offset: int = 0, limit: int = 50) -> Page:
    return browse_db.page(store, where, sort, offset, limit)


def count(store: Store, where: BrowseFilter) -> int:
    return browse_db.count(store, where)


def matching_ids(store: Store, where: BrowseFilter) -> list[int]:
    """The finished generations a bulk decision on this set would touch."""
    return browse_db.done_ids(store, where)


def bulk_decide(store: Store, where: BrowseFilter, decision: str, reviewer: str) -> list[int]:
    """Accept or reject every finished generation in the set as one reviewer action: one undo reverts it.

    Recorded as ordinary decisions in the review log (one row per generation, one shared action id),
    committed in one transaction before returning. Returns the generations decided.
    """
    if decision not in ("accept", "reject"):
        raise ValueError(f"bulk decisions are accept or reject, not {decision!r}")
    ids = browse_db.done_ids(store, where)
    if ids:
        reviews_db.record(store, [Decision(g, decision) for g in ids], reviewer)
    return ids


def choices(store: Store) -> dict[str, list]:
    """Known types, styles, runs and reviewers, offered as choices instead of free text."""
    return browse_db.choices(store)
