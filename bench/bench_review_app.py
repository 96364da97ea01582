"""The review app's cost must not grow with the database: time to first screen and accept->next latency
with 1M generations, divided by the same with 1k, in one run (goal: ratio <= 1.2)."""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import report, usage  # noqa: E402
from make_db import build  # noqa: E402

from gristmill.app.tui.app import make_app  # noqa: E402

ACCEPTS = 40


async def measure(db: Path) -> tuple[float, float]:
    start = time.perf_counter()
    app = make_app(db, reviewer="bench")
    async with app.run_test(size=(80, 24)) as pilot:
        while getattr(app.screen, "item", None) is None:
            await pilot.pause(0.001)
        first_screen = time.perf_counter() - start
        latencies = []
        for _ in range(ACCEPTS):
            before = app.screen.item.generation_id
            t = time.perf_counter()
            await pilot.press("a")
            while app.screen.item is None or app.screen.item.generation_id == before:
                await pilot.pause(0.001)
            latencies.append(time.perf_counter() - t)
    return first_screen, statistics.median(latencies)


def main() -> None:
    work = Path(tempfile.mkdtemp())
    small = build(work / "small.db", 1_000, reviewed=False)
    t = time.perf_counter()
    large = build(work / "large.db", 1_000_000, reviewed=False)
    print(f"built a 1M-generation database in {time.perf_counter() - t:.1f} s")
    results = {"small": [], "large": []}
    for _ in range(3):  # alternate, so machine noise hits both alike
        results["small"].append(asyncio.run(measure(small)))
        results["large"].append(asyncio.run(measure(large)))
    first = {k: statistics.median(r[0] for r in v) for k, v in results.items()}
    accept = {k: statistics.median(r[1] for r in v) for k, v in results.items()}
    report("time to first screen, 1M vs 1k", first["large"], first["small"], "s", "<= 1.2", False)
    report("accept->next latency, 1M vs 1k", accept["large"] * 1000, accept["small"] * 1000, "ms", "<= 1.2", False)


if __name__ == "__main__":
    usage(__doc__)
    main()
