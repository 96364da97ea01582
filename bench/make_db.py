"""Build a database of N reviewed-or-pending generations quickly (for the export and review-app benchmarks)."""

from __future__ import annotations

import json
from pathlib import Path

from gristmill.db import open_store
from gristmill.db.connection import utc_now


def build(path: Path, n: int, accepted_every: int = 1, reviewed: bool = True) -> Path:
    now = utc_now()
    with open_store(path) as store, store.write() as conn:
        conn.execute("INSERT INTO runs (engine, model, model_fingerprint, style, params, seed, version, started_at, settings)"
                     " VALUES ('llama_cpp', 'bench', 'sha256:bench', 'completion', ?, 0, 'bench', ?, ?)",
                     (json.dumps({"max_tokens": 64}), now, json.dumps({"style": "completion"})))
        conn.executemany(
            "INSERT INTO instructions (id, instruction, input, instruction_type, source, content_hash, created_at)"
            " VALUES (?, ?, '', 'question', 'bench', ?, ?)",
            ((i, f"Question number {i} about topic {i % 1013}?", f"h{i}", now) for i in range(1, n + 1)))
        conn.executemany(
            "INSERT INTO generations (id, instruction_id, run_id, status, prompt, prompt_tokens, prompt_token_ids_sha256,"
            " completion, completion_tokens, finish_reason, seed, created_at, finished_at)"
            " VALUES (?, ?, 1, 'done', ?, 12, 'x', ?, 20, 'stop', ?, ?, ?)",
            ((i, i, f"Q: Question number {i} about topic {i % 1013}?\nA:",
              f" Answer {i}: topic {i % 1013} is explained by reason {i * 7 % 10007}.", i, now, now)
             for i in range(1, n + 1)))
        if reviewed:
            conn.executemany(
                "INSERT INTO reviews (id, generation_id, decision, reviewer, created_at, action_id) VALUES (?, ?, ?, 'bench', ?, ?)",
                ((i, i, "accept" if i % accepted_every == 0 else "reject", now, f"a{i}") for i in range(1, n + 1)))
            # generations.decision/review_id are kept by the database's triggers on reviews (m005)
    return path
