"""Exporting 100k accepted records against a bare sqlite3 JSON dump of the same rows (goal: <= 2x the time)."""

from __future__ import annotations

import json
import sqlite3
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import best_of, report  # noqa: E402
from make_db import build  # noqa: E402

from gristmill.app.export import export  # noqa: E402
from gristmill.db import open_store  # noqa: E402

N = 100_000


def main() -> None:
    work = Path(tempfile.mkdtemp())
    db = build(work / "bench.db", N)

    def bare() -> None:
        conn = sqlite3.connect(db)
        conn.row_factory = sqlite3.Row
        with (work / "bare.jsonl").open("w") as out:
            for row in conn.execute("SELECT g.*, i.instruction, i.input, i.instruction_type FROM generations g "
                                    "JOIN instructions i ON i.id = g.instruction_id "
                                    "WHERE g.decision = 'accept' ORDER BY g.id"):
                out.write(json.dumps(dict(row), ensure_ascii=False) + "\n")
        conn.close()

    def ours() -> None:
        with open_store(db) as store:
            assert export(store, work / "ours.jsonl", dedup="off").records == N

    def ours_dedup() -> None:
        with open_store(db) as store:
            export(store, work / "dedup.jsonl")

    baseline = best_of(3, bare)
    measured = best_of(3, ours)
    print(f"export of {N} accepted records (native format)")
    report("export time, --no-dedup", measured, baseline, "s", "<= 2.0", higher_is_better=False)
    report("export time, with MinHash dedup", best_of(1, ours_dedup), baseline, "s", "(informative)", False)


if __name__ == "__main__":
    main()
