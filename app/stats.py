"""Stats for the app's stats room and `gristmill stats --json`: one function, so both show the same numbers."""

from __future__ import annotations

from gristmill.db import Store
from gristmill.db import stats as stats_db
from gristmill.db import stats_detail


def rate(counts: dict[str, int]) -> float | None:
    """Acceptance: accepted / (accepted + rejected); None before any verdict."""
    verdicts = counts.get("accept", 0) + counts.get("reject", 0)
    return round(counts.get("accept", 0) / verdicts, 4) if verdicts else None


def collect_all(store: Store) -> dict:
    """Counts (as before), acceptance by type, style (and pool), reviewer, run and quality flag, the response
    length histogram (accepted vs rejected) and the latest run's throughput per minute."""
    data: dict = dict(stats_db.collect(store))
    groups = {name: stats_detail.acceptance(store, name) for name in ("type", "style", "reviewer", "run")}
    groups["flag"] = stats_detail.acceptance_by_flag(store)
    data["acceptance"] = {
        name: {key: {**counts, "rate": rate(counts)} for key, counts in values.items()}
        for name, values in groups.items()
    }
    data["response_lengths"] = stats_detail.response_lengths(store)
    data["throughput"] = stats_detail.throughput(store)
    return data
