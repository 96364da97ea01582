"""Runs: one generation job's settings, so its rows can be resumed with exactly those settings."""

from __future__ import annotations

import json
from dataclasses import dataclass

from gristmill.db.connection import Store, utc_now


@dataclass(frozen=True)
class RunRecord:
    id: int
    engine: str
    model: str
    model_fingerprint: str
    style: str
    params: dict
    seed: int
    samples: int
    settings: dict
    config_hash: str | None
    version: str
    started_at: str
    finished_at: str | None
    style_definition: str | None = None  # the style's content as JSON (app.prompts.style_to_json)


def _record(row) -> RunRecord:
    return RunRecord(
        id=row["id"], engine=row["engine"], model=row["model"],
        model_fingerprint=row["model_fingerprint"], style=row["style"],
        params=json.loads(row["params"]), seed=row["seed"], samples=row["samples"],
        settings=json.loads(row["settings"]), config_hash=row["config_hash"],
        version=row["version"], started_at=row["started_at"], finished_at=row["finished_at"],
        style_definition=row["style_definition"],
    )


def create(store: Store, *, engine: str, model: str, model_fingerprint: str, style: str,
           params: dict, seed: int, samples: int, settings: dict, config_hash: str,
           version: str, style_definition: str | None = None) -> RunRecord:
    with store.write() as conn:
        cursor = conn.execute(
            """INSERT INTO runs (engine, model, model_fingerprint, style, params, seed, samples,
                                 settings, config_hash, version, started_at, style_definition)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
            (engine, model, model_fingerprint, style, json.dumps(params, sort_keys=True), seed,
             samples, json.dumps(settings, sort_keys=True), config_hash, version, utc_now(),
             style_definition),
        )
    return get(store, cursor.lastrowid)


def get(store: Store, run_id: int) -> RunRecord | None:
    row = store.conn.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
    return _record(row) if row else None


def find_by_config(store: Store, config_hash: str) -> RunRecord | None:
    row = store.conn.execute(
        "SELECT * FROM runs WHERE config_hash = ? ORDER BY id DESC LIMIT 1", (config_hash,)
    ).fetchone()
    return _record(row) if row else None


def all_runs(store: Store) -> list[RunRecord]:
    return [_record(r) for r in store.conn.execute("SELECT * FROM runs ORDER BY id")]


def mark_finished(store: Store, run_id: int, finished: bool) -> None:
    with store.write() as conn:
        conn.execute("UPDATE runs SET finished_at = ? WHERE id = ?",
                     (utc_now() if finished else None, run_id))


def record_servers(store: Store, run_id: int, servers: list[dict]) -> None:
    """Remote runs keep the endpoints that served them and what each `GET /v1/models` said (latest session)."""
    with store.write() as conn:
        conn.execute("UPDATE runs SET settings = json_set(settings, '$.servers', json(?)) WHERE id = ?",
                     (json.dumps(servers, sort_keys=True), run_id))
