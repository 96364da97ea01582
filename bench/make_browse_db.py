"""A database of N generations for the browse and search benchmark and the 1M-row tests.

Rows are written before the search index exists and indexed by the m009 migration afterwards, the way
an existing user's database is upgraded (and far faster than a trigger per row). Every 1000th
instruction carries a rare planted word in its input, every 100000th completion another.
"""

from __future__ import annotations

import json
from pathlib import Path

from gristmill.db import open_store
from gristmill.db.connection import utc_now

TYPES = ("question", "creative", "math", "classification")
INPUT_WORD = "okapi"  # in the input of every 1000th instruction
OUTPUT_WORD = "aardvark"  # in the completion of every 100000th generation


def build(path: Path, n: int) -> Path:
    now = utc_now()
    with open_store(path, stop_before="m009_search_index") as store, store.write() as conn:
        conn.execute("INSERT INTO runs (engine, model, model_fingerprint, style, params, seed, version, started_at,"
                     " settings) VALUES ('llama_cpp', 'bench', 'sha256:bench', 'completion', ?, 0, 'bench', ?, ?)",
                     (json.dumps({"max_tokens": 64}), now, json.dumps({"style": "completion"})))
        conn.executemany(
            "INSERT INTO instructions (id, instruction, input, instruction_type, source, content_hash, created_at)"
            " VALUES (?, ?, ?, ?, 'bench', ?, ?)",
            ((i, f"Question number {i} about topic {i % 1013}?",
              f"Context with an {INPUT_WORD} number {i}." if i % 1000 == 0 else "", TYPES[i % 4], f"h{i}", now)
             for i in range(1, n + 1)))
        conn.executemany(
            "INSERT INTO generations (id, instruction_id, run_id, status, prompt, prompt_tokens, prompt_token_ids_sha256,"
            " completion, completion_tokens, finish_reason, seed, created_at, finished_at)"
            " VALUES (?, ?, 1, 'done', ?, 12, 'x', ?, 20, 'stop', ?, ?, ?)",
            ((i, i, f"Q: Question number {i} about topic {i % 1013}?\nA:",
              f" Answer {i}: topic {i % 1013} is explained by reason {i * 7 % 10007}."
              + (f" Also an {OUTPUT_WORD}." if i % 100_000 == 0 else ""), i, now, now)
             for i in range(1, n + 1)))
    with open_store(path):  # the remaining migrations, m009 building the index for the rows above
        pass
    return path
