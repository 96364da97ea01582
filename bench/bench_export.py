"""Exporting 100k and 1M accepted records against a bare sqlite3 JSON dump of the same rows: time and peak memory.

Goals: the default export (dedup rule `pair`) at most 5x the bare dump's time at 100k; `--dedup off` at most 2x;
peak memory of a 1M-record export a few hundred MB. Each measure runs in a fresh process, so its peak resident
memory (ru_maxrss) is its own. `python bench/bench_export.py [N ...]` (default 100000 1000000).
"""

from __future__ import annotations

import json
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import report, usage  # noqa: E402
from make_db import build  # noqa: E402


def bare(db: Path, out: Path) -> int:
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    count = 0
    with out.open("w") as handle:
        for row in conn.execute("SELECT g.*, i.instruction, i.input, i.instruction_type FROM generations g "
                                "JOIN instructions i ON i.id = g.instruction_id "
                                "WHERE g.decision = 'accept' ORDER BY g.id"):
            handle.write(json.dumps(dict(row), ensure_ascii=False) + "\n")
            count += 1
    conn.close()
    return count


def child(kind: str, db: Path, out: Path) -> None:
    """One measure in this process: prints {"seconds", "peak_mb", "records"}."""
    start = time.perf_counter()
    if kind == "bare":
        records = bare(db, out)
    else:
        from gristmill.app.export import export
        from gristmill.db import open_store
        with open_store(db) as store:
            records = export(store, out, dedup=kind).records
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps({"seconds": seconds, "peak_mb": peak_mb, "records": records}))


def measure(kind: str, db: Path, out: Path, repeats: int) -> dict:
    runs = []
    for _ in range(repeats):
        result = subprocess.run([sys.executable, __file__, "--child", kind, str(db), str(out)],
                                check=True, capture_output=True, text=True)
        runs.append(json.loads(result.stdout))
    runs.sort(key=lambda r: r["seconds"])
    return runs[len(runs) // 2]  # the median run


def main(sizes: list[int]) -> None:
    work = Path(tempfile.mkdtemp())
    for n in sizes:
        db = build(work / f"bench-{n}.db", n)
        repeats = 3 if n <= 100_000 else 1
        baseline = measure("bare", db, work / "bare.jsonl", repeats)
        print(f"export of {n} accepted records (native format); bare dump {baseline['seconds']:.2f} s, "
              f"peak {baseline['peak_mb']:.0f} MB")
        for kind, goal in (("off", "<= 2.0"), ("pair", "<= 5.0" if n <= 100_000 else "(informative)")):
            ours = measure(kind, db, work / "ours.jsonl", repeats)
            assert ours["records"] == n or kind != "off", ours
            report(f"  export time, --dedup {kind}", ours["seconds"], baseline["seconds"], "s", goal, False)
            if ours["records"] != n:  # the bench rows hold a few real near-duplicate pairs at 1M
                print(f"  --dedup {kind} dropped {n - ours['records']} near-duplicate record(s)")
            print(f"  peak memory, --dedup {kind}: {ours['peak_mb']:.0f} MB (bare dump {baseline['peak_mb']:.0f} MB)")
        db.unlink()


if __name__ == "__main__":
    usage(__doc__)
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]))
    else:
        main([int(a) for a in sys.argv[1:]] or [100_000, 1_000_000])
