"""`gristmill add` of 100k JSONL lines, against a bare sqlite-utils insert of the same rows (goal: within 2x)."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import sqlite_utils

sys.path.insert(0, str(Path(__file__).parent))
from common import best_of, report, usage  # noqa: E402

from gristmill.app.ingest import import_file  # noqa: E402
from gristmill.db import open_store  # noqa: E402

N = 100_000


def main() -> None:
    work = Path(tempfile.mkdtemp())
    source = work / "rows.jsonl"
    with source.open("w") as handle:
        for i in range(N):
            handle.write(json.dumps({"instruction": f"Instruction number {i}: explain topic {i % 977}.",
                                     "input": "" if i % 3 else f"context {i}", "category": "general_qa"}) + "\n")
    counter = iter(range(1000))

    def bare() -> None:
        db = sqlite_utils.Database(work / f"bare{next(counter)}.db")
        db.conn.execute("PRAGMA journal_mode = WAL")
        with source.open() as handle:
            db["instructions"].insert_all((json.loads(line) for line in handle), batch_size=1000)

    def ours() -> None:
        with open_store(work / f"ours{next(counter)}.db") as store:
            assert import_file(store, source).added == N

    baseline = best_of(3, bare)
    measured = best_of(3, ours)
    print(f"import of {N} JSONL lines: gristmill {N / measured:,.0f} lines/s, bare sqlite-utils insert "
          f"{N / baseline:,.0f} lines/s")
    report("import time", measured, baseline, "s", "<= 2.0", higher_is_better=False)


if __name__ == "__main__":
    usage(__doc__)
    main()
