"""The `reviews` log is the truth for every writer: rows written with plain sqlite3 count like gristmill's own.

The expected state is computed here, independently, by replaying the log in Python; export, `stats --json`
and the review queue must agree with it, for appends, undo rows with and without a target, hand edits and
hand deletes, and for a database migrated from before the triggers existed.
"""

from __future__ import annotations

import json
import sqlite3

import pytest
from pathlib import Path

from typer.testing import CliRunner

from gristmill.app.cli import app
from gristmill.app.generate import RunSettings, open_run, run_generation
from gristmill.app.ingest import import_file
from gristmill.app.review import decide, next_in_queue, undo
from gristmill.db import open_store
from gristmill.db.reviews import QueueFilter, counts
from gristmill.models import GenerationParams
from gristmill.models.fake import FakeEngine
from tests.conftest import write

runner = CliRunner()
N = 24


def make_db(tmp_path: Path, stop_before: str | None = None) -> Path:
    db = tmp_path / "test.db"
    with open_store(db, stop_before=stop_before) as store:
        lines = "\n".join(json.dumps({"instruction": f"Question {i}: what is {i} squared?"}) for i in range(N))
        import_file(store, write(tmp_path / "i.jsonl", lines + "\n"))
        if stop_before is None:
            engine = FakeEngine(replies=[" An answer."])
            run, style, settings = open_run(store, engine, RunSettings(params=GenerationParams(max_tokens=20)))
            run_generation(store, engine, run, style, settings)
    return db


def expected_state(db: Path) -> dict[int, tuple[str, int]]:
    """Replay the log by DESIGN's rule: generation id -> (decision, review id) of its current decision."""
    conn = sqlite3.connect(db)
    in_force: dict[int, list[int]] = {}
    decisions: dict[int, str] = {}
    for rid, gid, decision, target in conn.execute(
            "SELECT id, generation_id, decision, undoes_review_id FROM reviews ORDER BY id"):
        forced = in_force.setdefault(gid, [])
        if decision != "undo":
            forced.append(rid)
            decisions[rid] = decision
        elif target is not None:
            if target in forced:
                forced.remove(target)
        elif forced:
            forced.remove(max(forced))
    conn.close()
    return {gid: (decisions[max(f)], max(f)) for gid, f in in_force.items() if f}


def sql(db: Path, statement: str, params: tuple = ()) -> int:
    """A write as a user makes it: the stdlib sqlite3 module, none of gristmill's code or pragmas."""
    conn = sqlite3.connect(db)
    with conn:
        cursor = conn.execute(statement, params)
    conn.close()
    return cursor.lastrowid


def review(db: Path, gid: int, decision: str, edited: str | None = None, undoes: int | None = None) -> int:
    return sql(db, "INSERT INTO reviews (generation_id, decision, edited_response, reviewer, created_at, "
                   "undoes_review_id) VALUES (?, ?, ?, 'sql-user', '2026-01-01', ?)", (gid, decision, edited, undoes))


def assert_everything_agrees(tmp_path: Path, db: Path) -> dict[int, tuple[str, int]]:
    expected = expected_state(db)
    with open_store(db) as store:
        cache = {r["id"]: (r["decision"], r["review_id"]) for r in
                 store.query("SELECT id, decision, review_id FROM generations WHERE status = 'done'")}
        assert {g: v for g, v in cache.items() if v != (None, None)} == expected
        queue, gid = [], None
        while (gid := next_in_queue(store, QueueFilter(state="unreviewed"), after=gid)) is not None:
            queue.append(gid)
        assert queue == sorted(set(cache) - set(expected))
        for state in ("accept", "reject", "skip"):
            queue, gid = [], None
            while (gid := next_in_queue(store, QueueFilter(state=state), after=gid)) is not None:
                queue.append(gid)
            assert queue == sorted(g for g, (d, _) in expected.items() if d == state)
        assert counts(store)["accept"] == sum(d == "accept" for d, _ in expected.values())
    out = tmp_path / "out.jsonl"
    result = runner.invoke(app, ["--db", str(db), "export", str(out), "--dedup", "off"])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in records] == sorted(g for g, (d, _) in expected.items() if d == "accept")
    conn = sqlite3.connect(db)
    for record in records:
        edited = conn.execute("SELECT edited_response FROM reviews WHERE id = ?",
                              (expected[record["id"]][1],)).fetchone()[0]
        assert record["response"] == (edited if edited is not None else " An answer.")
    conn.close()
    stats = json.loads(runner.invoke(app, ["--db", str(db), "stats", "--json"]).output)
    tally: dict[str, int] = {}
    for decision, _ in expected.values():
        tally[decision] = tally.get(decision, 0) + 1
    tally["unreviewed"] = N - len(expected)
    assert stats["decisions"] == tally
    return expected


def test_rows_written_with_sqlite3_count_like_gristmills(tmp_path):
    db = make_db(tmp_path)
    for gid in range(1, 13):  # the report: 12 accepts inserted by hand exported 0 records
        review(db, gid, "accept")
    assert len(assert_everything_agrees(tmp_path, db)) == 12
    review(db, 13, "reject")
    review(db, 14, "accept", edited="An edited answer.")
    review(db, 15, "skip")
    first = review(db, 16, "accept")
    review(db, 16, "reject")
    review(db, 16, "undo", undoes=first)  # a targeted undo of the older row: the reject stays in force
    review(db, 17, "accept")
    review(db, 17, "undo")  # no target: cancels the latest decision in force -> unreviewed
    review(db, 18, "accept")
    review(db, 18, "reject", edited="ignored")
    review(db, 18, "undo")  # cancels the reject -> accept
    review(db, 19, "accept", edited="Edit one.")
    review(db, 19, "accept", edited="Edit two.")
    review(db, 19, "undo")
    review(db, 19, "undo")  # undo twice: both edits cancelled -> unreviewed
    review(db, 20, "undo")  # nothing in force: a no-op
    review(db, 20, "accept")
    expected = assert_everything_agrees(tmp_path, db)
    assert expected[16][0] == "reject" and expected[18][0] == "accept" and 17 not in expected
    assert 19 not in expected and expected[20][0] == "accept" and expected[14][0] == "accept"


def test_hand_deletes_and_edits_of_the_log_keep_the_cache_right(tmp_path):
    db = make_db(tmp_path)
    accept = review(db, 1, "accept")
    reject = review(db, 1, "reject")
    assert assert_everything_agrees(tmp_path, db)[1][0] == "reject"
    sql(db, "DELETE FROM reviews WHERE id = ?", (reject,))
    assert assert_everything_agrees(tmp_path, db)[1][0] == "accept"
    sql(db, "UPDATE reviews SET decision = 'skip' WHERE id = ?", (accept,))
    assert assert_everything_agrees(tmp_path, db)[1][0] == "skip"
    sql(db, "UPDATE reviews SET generation_id = 2 WHERE id = ?", (accept,))  # moved: 1 is unreviewed again
    expected = assert_everything_agrees(tmp_path, db)
    assert 1 not in expected and expected[2][0] == "skip"
    undo_row = review(db, 2, "undo")
    assert 2 not in assert_everything_agrees(tmp_path, db)
    sql(db, "DELETE FROM reviews WHERE id = ?", (undo_row,))
    assert assert_everything_agrees(tmp_path, db)[2][0] == "skip"


def test_the_decision_cache_cannot_be_written_around_the_log(tmp_path):
    """`UPDATE generations SET decision = 'accept'` had changed stats and not export (which follows the log),
    silently; the other way round a logged accept vanished from the export. The database refuses both."""
    import sqlite3

    db = make_db(tmp_path)
    review(db, 1, "accept")
    for statement in ("UPDATE generations SET decision = 'accept' WHERE id <= 3",
                      "UPDATE generations SET decision = 'reject', review_id = NULL WHERE id = 1",
                      "UPDATE generations SET review_id = NULL WHERE id = 1"):
        with pytest.raises(sqlite3.IntegrityError, match="follow the reviews log: insert a row into reviews"):
            sql(db, statement)
    sql(db, "UPDATE generations SET decision = decision, review_id = review_id")  # what the log says: allowed
    assert assert_everything_agrees(tmp_path, db) == {1: ("accept", 1)}


def test_m011_puts_back_what_the_log_says_where_a_hand_edit_had_changed_the_cache(tmp_path):
    db = make_db(tmp_path)
    review(db, 1, "accept")
    with open_store(db) as store, store.write() as conn:  # as before m011: the trigger did not exist yet
        conn.execute("DROP TRIGGER generations_decision_is_derived")
        conn.execute("DELETE FROM _sqlite_migrations WHERE name = 'm011_decision_cache_only_from_the_log'")
        conn.execute("UPDATE generations SET decision = 'accept' WHERE id = 2")  # no log row: export leaves it out
        conn.execute("UPDATE generations SET decision = NULL, review_id = NULL WHERE id = 1")  # logged accept hidden
    assert assert_everything_agrees(tmp_path, db) == {1: ("accept", 1)}  # opening migrates: the log's state


def test_gristmill_and_sqlite3_writers_interleave(tmp_path):
    db = make_db(tmp_path)
    with open_store(db) as store:
        decide(store, 1, "accept", "ann")
    review(db, 1, "undo")  # a hand undo cancels ann's accept
    assert 1 not in assert_everything_agrees(tmp_path, db)
    with open_store(db) as store:
        decide(store, 2, "reject", "ann")
        review(db, 3, "accept")
        sql(db, "UPDATE reviews SET reviewer = 'ann' WHERE generation_id = 3")
        assert undo(store, "ann") == [3]  # a hand-written row is its own action
        assert undo(store, "ann") == [2]
        assert undo(store, "ann") == []  # ann's accept of 1 was already cancelled by the hand undo
    assert assert_everything_agrees(tmp_path, db) == {}


def test_migration_derives_the_cache_from_the_log_with_old_undo_rows(tmp_path):
    """A database from before the triggers: m003's backfill ignored undo rows; m005 replays the log."""
    db = make_db(tmp_path, stop_before="m005_review_log_triggers")
    with open_store(db, stop_before="m005_review_log_triggers") as store:
        # rows as an older gristmill wrote them: plain SQL on that schema, so newer pipeline code never runs on it
        with store.write() as conn:
            conn.execute("INSERT INTO runs (id, engine, model, model_fingerprint, style, seed, version, started_at) "
                         "VALUES (1, 'fake', 'fake', 'f', 'completion', 0, '0.1.0', 't')")
            conn.execute("INSERT INTO generations (instruction_id, run_id, status, prompt, completion, "
                         "completion_tokens, finish_reason, created_at) "
                         "SELECT id, 1, 'done', 'Q', ' An answer.', 3, 'eos', 't' FROM instructions ORDER BY id")
        assert not store.query("SELECT 1 FROM sqlite_master WHERE type = 'trigger'")
    review(db, 1, "accept")
    review(db, 1, "undo")  # an old-style undo row, without a target
    review(db, 2, "accept")
    review(db, 2, "reject")
    review(db, 2, "undo")
    review(db, 3, "accept")
    # the cache as the old code (or m003's backfill) left it: undo rows ignored
    sql(db, "UPDATE generations SET (decision, review_id) = (SELECT r.decision, r.id FROM reviews r "
            "WHERE r.generation_id = generations.id AND r.decision != 'undo' ORDER BY r.id DESC LIMIT 1)")
    sql(db, "UPDATE generations SET decision = 'accept', review_id = 999 WHERE id = 4")  # stale: no log row
    with open_store(db) as store:
        assert "m005_review_log_triggers" in [r[0] for r in store.query("SELECT name FROM _sqlite_migrations")]
    expected = assert_everything_agrees(tmp_path, db)
    assert expected == {2: ("accept", 3), 3: ("accept", 6)}


def test_undo_lookups_use_indexes(tmp_path):
    db = make_db(tmp_path)
    with open_store(db) as store:
        from gristmill.db.reviews import IN_FORCE
        plan = " ".join(r[3] for r in store.query(
            f"EXPLAIN QUERY PLAN SELECT id FROM reviews r WHERE reviewer = 'x' AND {IN_FORCE} ORDER BY id DESC LIMIT 1"))
        assert "SEARCH c USING INTEGER PRIMARY KEY" in plan and "SCAN" not in plan
        plan = " ".join(r[3] for r in store.query(
            "EXPLAIN QUERY PLAN SELECT DISTINCT generation_id FROM reviews WHERE decision = 'undo'"))
        assert "USING INDEX idx_reviews_undo" in plan  # the partial index: only undo rows are read
