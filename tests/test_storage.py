"""The SQLite store: pragmas, ordered migrations from a blank and from an older database."""

from __future__ import annotations

import sqlite3

from gristmill.db import open_store
from gristmill.db.connection import pending_migrations, schema_version
from gristmill.db.migrations import MIGRATIONS, migration_names


def columns(conn, table: str) -> set[str]:
    return {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}


def test_blank_database_gets_every_table_and_column(tmp_path):
    with open_store(tmp_path / "a.db") as store:
        assert schema_version(store) == [m.name for m in MIGRATIONS._migrations]
        assert {"id", "instruction", "input", "instruction_type", "source", "content_hash", "metadata",
                "created_at"} <= columns(store.conn, "instructions")
        assert {"id", "engine", "model", "model_fingerprint", "style", "params", "seed", "version", "started_at",
                "finished_at"} <= columns(store.conn, "runs")
        assert {"id", "instruction_id", "run_id", "sample_index", "status", "prompt", "prompt_tokens",
                "prompt_token_ids_sha256", "completion", "completion_tokens", "finish_reason", "seed", "flags",
                "error", "created_at", "finished_at"} <= columns(store.conn, "generations")
        assert {"id", "generation_id", "decision", "edited_response", "reviewer", "created_at"} <= columns(
            store.conn, "reviews")


def test_pragmas_make_commits_durable(tmp_path):
    with open_store(tmp_path / "a.db") as store:
        assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert store.conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert store.conn.execute("PRAGMA busy_timeout").fetchone()[0] >= 1000  # per attempt; writers retry
        assert store.conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1


def test_older_database_upgrades_and_keeps_its_data(tmp_path):
    path = tmp_path / "old.db"
    with open_store(path, stop_before="m002_run_identity") as old:
        names = migration_names()
        assert pending_migrations(old) == names[names.index("m002_run_identity"):]
        assert "config_hash" not in columns(old.conn, "runs")
        with old.write() as conn:
            conn.execute("INSERT INTO instructions (instruction, content_hash, created_at) VALUES ('hi', 'h', 't')")
            conn.execute("INSERT INTO runs (engine, model, model_fingerprint, style, seed, version, started_at)"
                         " VALUES ('llama_cpp', 'm', 'sha256:x', 'completion', 0, '0.0.1', 't')")
            conn.execute("INSERT INTO generations (instruction_id, run_id, status, completion, created_at)"
                         " VALUES (1, 1, 'done', 'answer', 't')")
            conn.execute("INSERT INTO reviews (generation_id, decision, reviewer, created_at)"
                         " VALUES (1, 'accept', 'ann', 't')")
    with open_store(path) as new:
        assert pending_migrations(new) == []
        assert {"config_hash", "settings", "samples"} <= columns(new.conn, "runs")
        assert {"decision", "review_id", "style_meta"} <= columns(new.conn, "generations")
        assert {"undoes_review_id", "action_id"} <= columns(new.conn, "reviews")
        row = new.conn.execute("SELECT decision, review_id, completion FROM generations").fetchone()
        assert tuple(row) == ("accept", 1, "answer")  # the review cache is derived from the existing log


def test_a_second_connection_waits_instead_of_failing(tmp_path):
    path = tmp_path / "a.db"
    with open_store(path) as first, open_store(path) as second:
        with first.write() as conn:
            conn.execute("INSERT INTO instructions (instruction, content_hash, created_at) VALUES ('a', 'a', 't')")
        with second.write() as conn:
            conn.execute("INSERT INTO instructions (instruction, content_hash, created_at) VALUES ('b', 'b', 't')")
        assert first.conn.execute("SELECT count(*) FROM instructions").fetchone()[0] == 2
    assert sqlite3.connect(path).execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_a_run_that_must_exist_and_does_not_is_one_line_naming_it(tmp_path):
    """`runs.require`: a run deleted outside gristmill (the sqlite3 shell does not enforce foreign keys) is a
    StoreError naming the database and the run, which the command line prints as one line; a present run comes
    back as it was written."""
    import pytest

    from gristmill.db import runs as runs_db
    from gristmill.db.connection import StoreError

    with open_store(tmp_path / "a.db") as store:
        run = runs_db.create(
            store, engine="fake", model="m", model_fingerprint="sha256:m", style="default", params={}, seed=1,
            samples=1, settings={}, config_hash="c", version="0", identity="i",
        )
        assert runs_db.require(store, run.id) == run == runs_db.create(
            store, engine="fake", model="m", model_fingerprint="sha256:m", style="default", params={}, seed=1,
            samples=1, settings={}, config_hash="c", version="0", identity="i",
        )
        with pytest.raises(StoreError, match=rf"a\.db: run {run.id + 1} is not in the database"):
            runs_db.require(store, run.id + 1)


def _delete_reviewed_newest_generation_by_hand(path) -> None:
    """What a user does with the sqlite3 shell (foreign keys off there): the generation goes, its log stays."""
    with sqlite3.connect(path) as conn:
        newest = conn.execute("SELECT max(id) FROM generations").fetchone()[0]
        conn.execute("INSERT INTO reviews (generation_id, decision, reviewer, created_at) VALUES (?, 'accept', 'ann', 't')",
                     (newest,))
        conn.execute("DELETE FROM generations WHERE id = ?", (newest,))
    conn.close()


def _add_generation(store) -> int:
    with store.write() as conn:
        cursor = conn.execute("INSERT INTO generations (instruction_id, run_id, sample_index, created_at) "
                              "VALUES (1, 1, (SELECT count(*) FROM generations), 't')")
    return cursor.lastrowid


def _seed(conn) -> None:
    conn.execute("INSERT INTO instructions (instruction, content_hash, created_at) VALUES ('hi', 'h', 't')")
    conn.execute("INSERT INTO runs (engine, model, model_fingerprint, style, seed, version, started_at)"
                 " VALUES ('llama_cpp', 'm', 'sha256:x', 'completion', 0, '0.0.1', 't')")
    for k in range(2):
        conn.execute("INSERT INTO generations (instruction_id, run_id, sample_index, created_at) VALUES (1, 1, ?, 't')",
                     (k,))


def test_a_new_generation_never_inherits_the_reviews_of_one_deleted_by_hand(tmp_path):
    """Ids are never reused, so the log of a generation deleted with sqlite3 never attaches to a new one (it would be
    shown as reviewed and exported as accepted without anyone having seen it)."""
    path = tmp_path / "a.db"
    with open_store(path) as store, store.write() as conn:
        _seed(conn)
    _delete_reviewed_newest_generation_by_hand(path)
    with open_store(path) as store:
        assert _add_generation(store) == 3
        assert store.conn.execute("SELECT decision FROM generations WHERE id = 3").fetchone()[0] is None


def test_a_database_from_before_autoincrement_keeps_its_rows_and_never_reuses_a_referenced_id(tmp_path):
    """The rebuild keeps every row, index and trigger; the counter starts above ids only the log still names."""
    path = tmp_path / "old.db"
    with open_store(path, stop_before="m010_generation_ids_never_reused") as old, old.write() as conn:
        _seed(conn)
        conn.execute("UPDATE generations SET status = 'done', completion = 'Paris is the capital' WHERE id = 1")
        conn.execute("INSERT INTO reviews (generation_id, decision, reviewer, created_at) VALUES (1, 'reject', 'b', 't')")
        before = {row[0]: row[1] for row in conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE tbl_name = 'generations' AND type IN ('index', 'trigger')")}
    _delete_reviewed_newest_generation_by_hand(path)
    with open_store(path) as store:
        assert pending_migrations(store) == []
        after = {row[0]: row[1] for row in store.conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE tbl_name = 'generations' AND type IN ('index', 'trigger')")}
        assert {name: sql for name, sql in after.items() if name != "generations_decision_is_derived"} == before  # m011's
        assert tuple(store.conn.execute("SELECT id, completion, decision FROM generations").fetchone()) == (
            1, "Paris is the capital", "reject")
        assert [tuple(r) for r in store.conn.execute("SELECT rowid FROM search_index WHERE search_index MATCH 'paris'")] == [(1,)]
        assert store.conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert _add_generation(store) == 3
        assert store.conn.execute("SELECT decision FROM generations WHERE id = 3").fetchone()[0] is None
        assert store.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_a_database_from_a_newer_gristmill_is_refused_not_written(tmp_path):
    """A schema with a migration this version lacks was made by a newer gristmill: opening it for any command
    (even one that only reads) is one line naming what is unknown, and nothing is written to it."""
    import pytest

    from gristmill.db import StoreError

    path = tmp_path / "new.db"
    with open_store(path, stop_before="m010_generation_ids_never_reused") as store, store.write() as conn:
        conn.execute("INSERT INTO _sqlite_migrations (migration_set, name, applied_at) "
                     "VALUES ('gristmill', 'm099_from_the_future', 't')")
    for migrate in (True, False):
        with pytest.raises(StoreError, match="made by a newer gristmill .*m099_from_the_future"):
            open_store(path, migrate=migrate, create=False)
    with sqlite3.connect(path) as conn:
        names = [r[0] for r in conn.execute("SELECT name FROM _sqlite_migrations")]
    conn.close()
    assert "m010_generation_ids_never_reused" not in names


def test_the_autoincrement_rebuild_reads_a_table_a_tool_rewrote(tmp_path):
    """sqlite-utils' transform (and DB Browser) write the table back as CREATE TABLE "generations" ([id] ...):
    the rebuild must still find the id, keep every row, and count past the ids the log names."""
    import sqlite_utils

    path = tmp_path / "tool.db"
    with open_store(path, stop_before="m010_generation_ids_never_reused") as old, old.write() as conn:
        _seed(conn)
    sqlite_utils.Database(path)["generations"].transform(types={"error": str})
    assert '"generations"' in sqlite3.connect(path).execute(
        "SELECT sql FROM sqlite_master WHERE name = 'generations'").fetchone()[0]
    _delete_reviewed_newest_generation_by_hand(path)
    with open_store(path) as store:
        assert "AUTOINCREMENT" in store.conn.execute(
            "SELECT sql FROM sqlite_master WHERE name = 'generations'").fetchone()[0]
        assert [r[0] for r in store.conn.execute("SELECT id FROM generations")] == [1]
        assert _add_generation(store) == 3


def test_a_generations_table_without_an_integer_primary_key_is_one_clear_error(tmp_path):
    import pytest

    from gristmill.db import StoreError

    path = tmp_path / "odd.db"
    with open_store(path, stop_before="m010_generation_ids_never_reused") as old, old.write() as conn:
        _seed(conn)
    import sqlite_utils

    sqlite_utils.Database(path)["generations"].transform(pk=("run_id", "instruction_id", "sample_index"))
    with pytest.raises(StoreError, match="generations table is not declared as gristmill declares it"):
        open_store(path)
    with sqlite3.connect(path) as conn:
        assert "m010_generation_ids_never_reused" not in [r[0] for r in conn.execute("SELECT name FROM _sqlite_migrations")]
    conn.close()


def test_processes_opening_an_old_database_at_once_migrate_it_once(tmp_path):
    """Which migrations are pending is read under the write lock: the second process waits, then finds none
    (it had read m010 as pending too, rebuilt the rebuilt table and failed on recording it)."""
    import subprocess
    import sys

    path = tmp_path / "old.db"
    with open_store(path, stop_before="m010_generation_ids_never_reused") as old, old.write() as conn:
        _seed(conn)
        conn.executemany("INSERT INTO generations (instruction_id, run_id, sample_index, created_at) "
                         "VALUES (1, 1, ?, 't')", [(k,) for k in range(2, 20_000)])
    script = "import sys; from gristmill.db import open_store; open_store(sys.argv[1]).close(); print('ok')"
    processes = [subprocess.Popen([sys.executable, "-c", script, str(path)], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(4)]
    results = [p.communicate(timeout=120) for p in processes]
    assert [p.returncode for p in processes] == [0] * 4, results
    with sqlite3.connect(path) as conn:
        names = [r[0] for r in conn.execute("SELECT name FROM _sqlite_migrations")]
        assert names.count("m010_generation_ids_never_reused") == 1
        assert conn.execute("SELECT count(*) FROM generations").fetchone()[0] == 20_000
    conn.close()


def test_the_rebuild_reads_the_forms_db_browser_writes(tmp_path):
    """`"id" INTEGER NOT NULL PRIMARY KEY` is rebuilt; `PRIMARY KEY("id" AUTOINCREMENT)` is already what m010 makes."""
    for i, (column, key) in enumerate([('"id" INTEGER NOT NULL PRIMARY KEY', ""),
                                       ('"id" INTEGER NOT NULL', ', PRIMARY KEY("id" AUTOINCREMENT)')]):
        path = tmp_path / f"browser{i}.db"
        with open_store(path, stop_before="m010_generation_ids_never_reused") as old, old.write() as conn:
            _seed(conn)
            (table_sql,) = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'generations'").fetchone()
            columns = ", ".join(r[1] for r in conn.execute("PRAGMA table_info(generations)"))
            rewritten = table_sql.replace("CREATE TABLE generations", 'CREATE TABLE "generations_new"', 1).replace(
                "id INTEGER PRIMARY KEY,", column + ",", 1)
            rewritten = rewritten[: rewritten.rindex(")")] + key + ")"
            conn.execute("PRAGMA legacy_alter_table = ON")
            conn.execute(rewritten)
            conn.execute(f"INSERT INTO generations_new ({columns}) SELECT {columns} FROM generations")
            conn.execute("DROP TABLE generations")
            conn.execute('ALTER TABLE "generations_new" RENAME TO "generations"')
            conn.execute("PRAGMA legacy_alter_table = OFF")
        _delete_reviewed_newest_generation_by_hand(path)
        with open_store(path) as store:
            assert [r[0] for r in store.conn.execute("SELECT id FROM generations")] == [1]
            assert _add_generation(store) == 3, column
