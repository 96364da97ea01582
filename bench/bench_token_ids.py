"""How much storing the sampled token ids grows the database, per 1,000 generations.

The same 1,000 generations (through the real pipeline, fake engine, TOKENS tokens each) are measured
three ways after VACUUM: ids as packed uint32 (what gristmill stores), no ids (the baseline, as before
m008), and the same ids as JSON text with ids drawn from a 152k vocabulary (the obvious alternative).
"""

from __future__ import annotations

import json
import random
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gristmill.app.generate import RunSettings, open_run, run_generation  # noqa: E402
from gristmill.app.ingest import import_file  # noqa: E402
from gristmill.db import open_store  # noqa: E402
from gristmill.db.generations import pack_token_ids  # noqa: E402
from gristmill.models import GenerationParams  # noqa: E402
from gristmill.models.fake import FakeEngine  # noqa: E402

N, TOKENS = 1000, 150


def size(store) -> int:
    store.conn.execute("VACUUM")
    return store.conn.execute("PRAGMA page_count").fetchone()[0] * store.conn.execute("PRAGMA page_size").fetchone()[0]


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "i.jsonl"
        path.write_text("".join(json.dumps({"instruction": f"Question number {i}: what is {i} + {i}?"}) + "\n"
                                for i in range(N)))
        rng = random.Random(0)
        words = ["the", "sea", "answer", "because", "light", "water", "number", "is", "of", "and"]
        reply = " " + " ".join(rng.choice(words) for _ in range(TOKENS))[: TOKENS - 1]  # fake: one char, one token
        with open_store(Path(tmp) / "b.db") as store:
            import_file(store, path)
            engine = FakeEngine(replies=[reply], n_ctx=100_000)
            run, style, settings = open_run(store, engine, RunSettings(params=GenerationParams(max_tokens=TOKENS)))
            run_generation(store, engine, run, style, settings)
            stored = store.conn.execute("SELECT avg(length(completion_token_ids)) / 4.0 FROM generations").fetchone()[0]
            with_ids = size(store)
            ids = [[rng.randrange(151_643) for _ in range(TOKENS)] for _ in range(N)]
            store.conn.executemany("UPDATE generations SET completion_token_ids = ? WHERE id = ?",
                                   [(pack_token_ids(v), i + 1) for i, v in enumerate(ids)])
            packed_real = size(store)
            store.conn.executemany("UPDATE generations SET completion_token_ids = ? WHERE id = ?",
                                   [(json.dumps(v), i + 1) for i, v in enumerate(ids)])
            as_json = size(store)
            store.conn.execute("UPDATE generations SET completion_token_ids = NULL")
            without = size(store)
    per_k = (packed_real - without) / (N / 1000)
    print(f"token ids: {stored:.0f} tokens a generation; database {without / 1e6:.2f} MB without ids, "
          f"{packed_real / 1e6:.2f} MB with packed uint32 ids (fake-engine ids: {with_ids / 1e6:.2f} MB), "
          f"{as_json / 1e6:.2f} MB with the same ids as JSON text")
    print(f"token ids: +{per_k / 1024:.0f} KiB per 1,000 generations of {TOKENS} tokens "
          f"({per_k / 1000 / TOKENS:.2f} bytes a token); JSON text would add "
          f"{(as_json - without) / 1024:.0f} KiB, ratio {(packed_real - without) / (as_json - without):.2f}")


if __name__ == "__main__":
    from common import usage

    usage(__doc__)
    main()
