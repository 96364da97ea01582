"""Runs: one generation job's settings, so its rows can be resumed with exactly those settings."""

from __future__ import annotations

import json
from dataclasses import dataclass

from gristmill.db.connection import Store, StoreError, json_column, utc_now


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
    identity: str | None = None  # canonical digest of what can change an output; NULL once superseded (m006)


def _record(row) -> RunRecord:
    return RunRecord(
        id=row["id"],
        engine=row["engine"],
        model=row["model"],
        model_fingerprint=row["model_fingerprint"],
        style=row["style"],
        params=json_column(row["params"], "runs", "params", row["id"]),
        seed=row["seed"],
        samples=row["samples"],
        settings=json_column(row["settings"], "runs", "settings", row["id"]),
        config_hash=row["config_hash"],
        version=row["version"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        style_definition=row["style_definition"],
        identity=row["identity"] if "identity" in row.keys() else None,
    )


def create(
    store: Store,
    *,
    engine: str,
    model: str,
    model_fingerprint: str,
    style: str,
    params: dict,
    seed: int,
    samples: int,
    settings: dict,
    config_hash: str,
    version: str,
    style_definition: str | None = None,
    identity: str | None = None,
    new_run: bool = False,
) -> RunRecord:
    """Insert a run, or (same `identity`, not `new_run`) return the one that exists: insert-or-select in one
    write transaction, backed by a unique index, so two processes starting the same run create one.

    `new_run` moves the identity from the current run to the new one: the next plain `generate` with
    these settings continues the newest.
    """
    with store.write() as conn:
        if identity is not None:
            if new_run:
                conn.execute("UPDATE runs SET identity = NULL WHERE identity = ?", (identity,))
            else:
                row = conn.execute("SELECT id FROM runs WHERE identity = ?", (identity,)).fetchone()
                if row is not None:
                    return require(store, row[0])
        cursor = conn.execute(
            """INSERT INTO runs (engine, model, model_fingerprint, style, params, seed, samples,
                                 settings, config_hash, version, started_at, style_definition, identity)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
            (
                engine,
                model,
                model_fingerprint,
                style,
                json.dumps(params, sort_keys=True),
                seed,
                samples,
                json.dumps(settings, sort_keys=True),
                config_hash,
                version,
                utc_now(),
                style_definition,
                identity,
            ),
        )
        run_id = cursor.lastrowid
        if run_id is None:  # sqlite3 sets it on every successful INSERT
            raise StoreError(f"{store.path}: the new run was not inserted")
    return require(store, run_id)


def find_by_identity(store: Store, identity: str) -> RunRecord | None:
    row = store.conn.execute("SELECT * FROM runs WHERE identity = ?", (identity,)).fetchone()
    return _record(row) if row else None


def adopt(store: Store, run_id: int, identity: str) -> RunRecord:
    """Give a run from before m006 (found by its old `config_hash`) the canonical identity; if another process
    did that first, or gave it to another run, return the run that holds it."""
    with store.write() as conn:
        row = conn.execute("SELECT id FROM runs WHERE identity = ?", (identity,)).fetchone()
        if row is None:
            conn.execute("UPDATE runs SET identity = ? WHERE id = ? AND identity IS NULL", (identity, run_id))
            holder = run_id
        else:
            holder = row[0]
    return require(store, holder)


def record_settings(store: Store, run_id: int, **values: object) -> None:
    """Merge values into `runs.settings` (settings that cannot change an output, as last used)."""
    with store.write() as conn:
        row = conn.execute("SELECT settings FROM runs WHERE id = ?", (run_id,)).fetchone()
        settings = {**json.loads(row[0] or "{}"), **values}
        conn.execute("UPDATE runs SET settings = ? WHERE id = ?", (json.dumps(settings, sort_keys=True), run_id))


def get(store: Store, run_id: int) -> RunRecord | None:
    row = store.conn.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
    return _record(row) if row else None


def require(store: Store, run_id: int) -> RunRecord:
    """A run that must exist: one just written, or one a generation points at. It is missing only when a row was
    deleted outside gristmill (the sqlite3 shell does not enforce foreign keys): one clear line, not a crash."""
    run = get(store, run_id)
    if run is None:
        raise StoreError(f"{store.path}: run {run_id} is not in the database (deleted outside gristmill?)")
    return run


def find_by_config(store: Store, config_hash: str) -> RunRecord | None:
    """The newest run with this `config_hash` (how runs from before m006 were found)."""
    row = store.conn.execute(
        "SELECT * FROM runs WHERE config_hash = ? ORDER BY id DESC LIMIT 1", (config_hash,)
    ).fetchone()
    return _record(row) if row else None


def all_runs(store: Store) -> list[RunRecord]:
    return [_record(r) for r in store.conn.execute("SELECT * FROM runs ORDER BY id")]


def mark_finished(store: Store, run_id: int, finished: bool) -> None:
    with store.write() as conn:
        conn.execute("UPDATE runs SET finished_at = ? WHERE id = ?", (utc_now() if finished else None, run_id))


def record_servers(store: Store, run_id: int, servers: list[dict]) -> None:
    """Remote runs keep the endpoints that served them and what each `GET /v1/models` said (latest session)."""
    with store.write() as conn:
        conn.execute(
            "UPDATE runs SET settings = json_set(settings, '$.servers', json(?)) WHERE id = ?",
            (json.dumps(servers, sort_keys=True), run_id),
        )
