"""Browse and search must not grow with the database: browse first paint and search latency with 1M
generations against the same with 1k, in one run (goal: ratio <= 1.5; search under 100 ms at 1M).

First paint: from pressing `b` (once the app's start-up counts are done) to the first page in the table. Search: from Enter in the search box to
the results in the table (through the app), and the page query alone (the pipeline call the app makes).
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import report, usage  # noqa: E402
from make_browse_db import INPUT_WORD, build  # noqa: E402

from gristmill.app import browse  # noqa: E402
from gristmill.app.browse import BrowseFilter  # noqa: E402
from gristmill.app.tui.app import make_app  # noqa: E402
from gristmill.app.tui.browse_screen import PAGE_SIZE, BrowseScreen  # noqa: E402
from gristmill.db import open_store  # noqa: E402

PAINTED: list[float] = []  # when each page reached the table (Pilot's own settling is not counted)
_on_page_loaded = BrowseScreen.on_page_loaded


def _timed_page_loaded(self, message) -> None:
    _on_page_loaded(self, message)
    PAINTED.append(time.perf_counter())


BrowseScreen.on_page_loaded = _timed_page_loaded

WORDS = (INPUT_WORD, "topic", "reason", "answer 70*")  # rare, in every row, in every output, a prefix


async def measure_app(db: Path) -> tuple[float, float]:
    app = make_app(db, reviewer="bench")
    async with app.run_test(size=(80, 24)) as pilot:
        while getattr(app.screen, "item", None) is None or not app.counts:
            await pilot.pause(0.001)
        await app.workers.wait_for_complete()  # the room's own cost, not the header's first count beside it
        t = time.perf_counter()
        await pilot.press("b")
        screen = app.screen
        while getattr(screen, "shown_view", None) is None:
            await pilot.pause(0.001)
        first_paint = PAINTED[-1] - t
        searches = []
        for word in WORDS:
            box = screen.query_one("#search")
            box.value = word
            box.focus()
            t = time.perf_counter()
            await pilot.press("enter")
            while screen.shown_view is None or screen.shown_view.where.search != word:
                await pilot.pause(0.001)
            searches.append(PAINTED[-1] - t)
    return first_paint, statistics.median(searches)


def measure_query(db: Path) -> float:
    with open_store(db) as store:
        times = []
        for _ in range(20):
            for word in WORDS:
                t = time.perf_counter()
                browse.page(store, BrowseFilter(search=word), limit=PAGE_SIZE)
                times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    work = Path(tempfile.mkdtemp())
    small = build(work / "small.db", 1_000)
    t = time.perf_counter()
    large = build(work / "large.db", 1_000_000)
    print(f"built a 1M-generation database (indexed by the m009 migration) in {time.perf_counter() - t:.1f} s")
    results = {"small": [], "large": []}
    for _ in range(5):  # alternate, so machine noise hits both alike
        results["small"].append(asyncio.run(measure_app(small)))
        results["large"].append(asyncio.run(measure_app(large)))
    paint = {k: statistics.median(r[0] for r in v) for k, v in results.items()}
    search = {k: statistics.median(r[1] for r in v) for k, v in results.items()}
    query = {"small": measure_query(small), "large": measure_query(large)}
    report("browse first paint, 1M vs 1k", paint["large"] * 1000, paint["small"] * 1000, "ms", "<= 1.5", False)
    report("search in the app (Enter to results), 1M vs 1k", search["large"] * 1000, search["small"] * 1000, "ms",
           "<= 1.5, < 100 ms at 1M", False)
    report("search page query, 1M vs 1k", query["large"] * 1000, query["small"] * 1000, "ms", "<= 1.5", False)


if __name__ == "__main__":
    usage(__doc__)
    main()
