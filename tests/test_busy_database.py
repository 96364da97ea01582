"""A busy database never crashes anyone: another connection holds the write lock for 30 s while `generate`
(a subprocess) and the review app (Pilot) both work; afterwards every result and decision is committed."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time

from gristmill.app.generate import RunSettings, open_run, run_generation
from gristmill.app.ingest import import_file
from gristmill.app.review import decide
from gristmill.app.tui.app import make_app
from gristmill.db import open_store
from gristmill.db.connection import DatabaseBusy
from gristmill.models import GenerationParams
from gristmill.models.fake import FakeEngine
from tests.conftest import write
from tests.test_review_app import current, seed_db

HOLD_S = 30


def seed(tmp_path, n: int = 6):
    lines = [json.dumps({"instruction": f"Name a fruit, number {i}."}) for i in range(n)]
    db = tmp_path / "test.db"
    with open_store(db) as store:
        assert import_file(store, write(tmp_path / "a.jsonl", "\n".join(lines) + "\n")).ok
        engine = FakeEngine(replies=["apple"])
        run, style, settings = open_run(store, engine, RunSettings(params=GenerationParams(max_tokens=20)))
        run_generation(store, engine, run, style, settings)  # n generations for the app to review
    return db


def hold_write_lock(db) -> sqlite3.Connection:
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    holder.execute("UPDATE runs SET finished_at = finished_at")  # a real pending write
    return holder


async def test_a_30_second_write_lock_crashes_neither_generate_nor_the_review_app(tmp_path, gemma_path):
    db = seed(tmp_path)
    holder = hold_write_lock(db)
    locked_at = time.monotonic()
    process = subprocess.Popen([sys.executable, "-m", "gristmill", "generate", "--max-tokens", "4", "--quiet",
                                "--threads", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    taken = 0  # decisions the app accepted to make
    async with make_app(db, reviewer="ann").run_test() as pilot:
        app = pilot.app
        await pilot.pause()
        first = app.screen.item.generation_id
        await pilot.press("a")  # the lock is held: the app hands the write to a thread and says it waits
        taken += 1
        assert app.saving and "saving: database busy" in app.sub_title
        await pilot.press("a")  # a second decision while one waits is declined, not queued, not lost
        assert app.screen.item.generation_id == first
        await pilot.press("j", "k")  # reading and moving still work while the lock is held
        while time.monotonic() - locked_at < HOLD_S:
            await pilot.pause(0.5)
            assert process.poll() is None  # generate waits: it neither crashes nor gives up
        holder.execute("COMMIT")
        holder.close()
        while app.saving:
            await pilot.pause(0.05)
        assert app.screen.item is None or app.screen.item.generation_id != first
        while True:  # review everything, including what generate writes now
            if app.screen.item is not None:
                await pilot.press("a")
                taken += 1
                while app.saving:
                    await pilot.pause(0.05)
            elif process.poll() is not None:
                app.screen._recheck_when_empty()
                await pilot.pause(0.3)
                if app.screen.item is None:
                    break
            else:
                await pilot.pause(0.2)
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, err
    assert "Traceback" not in err and "locked" not in err
    assert "database busy" in err and "6 done" in out
    # read back from a fresh process, as a user's sqlite3 would (this process still holds the app's state)
    script = ("import json, sqlite3, sys; c = sqlite3.connect(sys.argv[1]); q = lambda s: c.execute(s).fetchone()[0]; "
              "print(json.dumps([q('PRAGMA integrity_check'), q(\"SELECT count(*) FROM generations WHERE status != 'done'\"), "
              "q('SELECT count(*) FROM generations'), q('SELECT count(*) FROM reviews'), "
              "q(\"SELECT count(*) FROM generations WHERE decision = 'accept'\")]))")
    check = subprocess.run([sys.executable, "-c", script, str(db)], capture_output=True, text=True)
    assert json.loads(check.stdout) == ["ok", 0, 12, 12, 12], check.stderr
    assert taken == 12

def test_ctrl_c_stops_a_generate_that_waits_for_the_lock(tmp_path, gemma_path):
    db = seed(tmp_path, 2)
    holder = hold_write_lock(db)
    # Ctrl-C's default action even when the test itself runs in the background (where SIGINT is ignored)
    process = subprocess.Popen([sys.executable, "-m", "gristmill", "generate", "--max-tokens", "4", "--quiet"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    waited = ""
    while "database busy" not in waited:
        waited += process.stderr.readline()
        assert process.poll() is None, waited
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    holder.execute("ROLLBACK")
    assert process.returncode == 130 and "Traceback" not in err
    assert sqlite3.connect(db).execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_an_import_that_waits_for_the_lock_says_so_and_then_imports(tmp_path):
    """`add` waited as long as another writer held the lock without a word: it looked hung."""
    db = seed(tmp_path, 1)
    holder = hold_write_lock(db)
    process = subprocess.Popen([sys.executable, "-m", "gristmill", "add", str(write(tmp_path / "n.txt", "new one\n"))],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    waited = ""
    while "database busy" not in waited:
        waited += process.stderr.readline()
        assert process.poll() is None, waited
    holder.execute("COMMIT")
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    assert "added 1" in out and "database free again: continuing" in err


def test_write_without_waiting_raises_busy_and_changes_nothing(tmp_path):
    db = seed(tmp_path, 1)
    holder = hold_write_lock(db)
    with open_store(db) as store:
        try:
            with store.write(wait=False) as conn:
                conn.execute("DELETE FROM generations")
        except DatabaseBusy:
            pass
        else:
            raise AssertionError("expected DatabaseBusy")
        assert not store.conn.in_transaction
        holder.execute("COMMIT")
        assert store.query("SELECT count(*) FROM generations")[0][0] == 1


def test_an_import_stages_while_another_process_writes_and_lands_whole(tmp_path):
    db = seed(tmp_path, 1)
    source = write(tmp_path / "b.jsonl", "".join(json.dumps({"instruction": f"b {i}"}) + "\n" for i in range(3000)))
    holder = hold_write_lock(db)
    with open_store(db) as store:
        from gristmill.db import instructions as instructions_db
        instructions_db.stage_begin(store)
        from gristmill.app.ingest import _to_instruction, KeyMap
        batch = [_to_instruction({"instruction": f"s {i}"}, f"x:{i}", KeyMap(), None) for i in range(10)]
        instructions_db.stage_batch(store, batch)  # staging takes no lock on the database file
        instructions_db.stage_discard(store)
        holder.execute("COMMIT")
        report = import_file(store, source)
        assert report.added == 3000
        assert store.query("SELECT count(*) FROM instructions")[0][0] == 3001


def test_opening_another_connection_in_this_process_keeps_the_commits_of_the_open_ones(tmp_path):
    """The root cause of decisions lost after a busy spell: opening a store read the file's header with a plain
    open()/close(), and closing any descriptor of a file drops every POSIX lock the process holds on it. The next
    process to close its connection then believed it was the last user, checkpointed and deleted the WAL, and the
    app's connection went on committing into the unlinked WAL: gone for every other process."""
    db = seed(tmp_path, 2)
    fresh = ("import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); "
             "print(c.execute('SELECT count(*) FROM reviews').fetchone()[0])")
    with open_store(db) as app_store:
        decide(app_store, 1, "accept", "ann")
        with open_store(db, migrate=False) as worker:  # what the app's workers do while it keeps its own open
            decide(worker, 2, "accept", "ann")
        check = subprocess.run([sys.executable, "-c", fresh, str(db)], capture_output=True, text=True)
        assert check.stdout.strip() == "2", check.stderr
        decide(app_store, 1, "reject", "ann")  # committed on the connection that stayed open
        check = subprocess.run([sys.executable, "-c", fresh, str(db)], capture_output=True, text=True)
        assert check.stdout.strip() == "3", check.stderr
        with open_store(db, migrate=False) as later:  # and this process's later connections still work
            assert later.query("SELECT count(*) FROM reviews")[0][0] == 3


async def test_quitting_while_a_decision_waits_keeps_what_was_committed_and_does_not_hang(tmp_path):
    db = seed(tmp_path, 3)
    async with make_app(db, reviewer="ann").run_test() as pilot:
        app = pilot.app
        await pilot.pause()
        await pilot.press("a")  # the lock is free: committed at once
        assert not app.saving
        holder = hold_write_lock(db)
        waiting = app.screen.item.generation_id
        await pilot.press("a")  # now it waits in a thread, and the header says so
        assert app.saving and "saving: database busy" in app.sub_title
        await pilot.press("q")  # the first q warns: the waiting decision would not be saved
        await pilot.pause()
        assert app.is_running and app.unsaved == f"decision (accept #{waiting})"
        assert any("press q again" in n.message for n in app._notifications)
        await pilot.press("q")  # the second quits, the lock still held
    # the worker stops waiting once the app is gone (before the other writer lets go)
    assert app.write_settled.wait(timeout=120)
    assert app.unsaved == f"decision (accept #{waiting})"
    holder.execute("COMMIT")
    holder.close()
    fresh = ("import json, sqlite3, sys; c = sqlite3.connect(sys.argv[1]); "
             "print(json.dumps([c.execute('PRAGMA integrity_check').fetchone()[0], "
             "c.execute('SELECT generation_id FROM reviews ORDER BY id').fetchall()]))")
    check = subprocess.run([sys.executable, "-c", fresh, str(db)], capture_output=True, text=True)
    assert json.loads(check.stdout) == ["ok", [[1]]], check.stderr
    assert waiting == 2


async def test_a_pick_while_another_process_writes_waits_in_a_thread_and_lands(tmp_path):
    db = seed_db(tmp_path, ["apple", "pear"], samples=2, n=1)
    holder = hold_write_lock(db)
    async with make_app(db, reviewer="ann").run_test() as pilot:
        app = pilot.app
        await pilot.pause()
        await pilot.press("2")  # best of N is a write like any decision: off the event loop while the lock is held
        assert app.saving and "saving: database busy" in app.sub_title
        await pilot.press("j")  # the event loop answers meanwhile
        holder.execute("COMMIT")
        holder.close()
        while app.saving:
            await pilot.pause(0.05)
        assert app.unsaved is None
    assert current(db) == {1: "reject", 2: "accept"}


async def test_a_bulk_decision_in_browse_waits_for_the_lock_in_a_thread(tmp_path):
    from gristmill.app.tui.confirm import ConfirmScreen

    db = seed(tmp_path, 3)
    holder = hold_write_lock(db)
    async with make_app(db, reviewer="ann").run_test() as pilot:
        app = pilot.app
        await pilot.pause()
        await pilot.press("b")
        await pilot.app.workers.wait_for_complete()
        await pilot.pause()
        await pilot.press("A")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("y")
        await pilot.pause()
        assert app.saving and "saving: database busy" in app.sub_title
        await pilot.press("u")  # a second write while one waits is declined, not queued
        holder.execute("COMMIT")
        holder.close()
        while app.saving:
            await pilot.pause(0.05)
        assert app.unsaved is None
    assert current(db) == {1: "accept", 2: "accept", 3: "accept"}


def test_review_exits_1_naming_the_decision_lost_when_quit_while_it_waited(tmp_path, monkeypatch):
    """The app said so before the second q; the command says it again and exits 1, so a script knows."""
    from typer.testing import CliRunner

    import gristmill.app.cli_review as cli_review
    import gristmill.app.tui.app as tui_app
    from gristmill.app.cli import app as cli

    class QuitWhileWaiting:
        unsaved = "decision (accept #3)"

        def run(self) -> None:
            pass

    seed(tmp_path, 3)
    monkeypatch.setattr(cli_review, "not_a_terminal", lambda: [])
    monkeypatch.setattr(tui_app, "make_app", lambda *args, **kwargs: QuitWhileWaiting())
    monkeypatch.setattr("gristmill.app.crash.guard_app", lambda app: [])
    result = CliRunner().invoke(cli, ["review"])
    assert result.exit_code == 1, result.output
    assert "the last decision (accept #3) was not saved" in " ".join(result.output.split())


def test_a_lock_that_keeps_readers_out_is_one_line_saying_so(tmp_path):
    """A connection in exclusive locking mode blocks readers too: commands had said `database: database is
    locked`, SQLite's words, which the README says never to show."""
    import sqlite3

    from typer.testing import CliRunner

    from gristmill.app.cli import app
    from gristmill.db import open_store

    with open_store(tmp_path / "test.db"):
        pass
    holder = sqlite3.connect(tmp_path / "test.db", isolation_level=None)
    try:
        holder.execute("PRAGMA locking_mode = EXCLUSIVE")
        holder.execute("BEGIN EXCLUSIVE")
        holder.execute("CREATE TABLE held (x)")
        result = CliRunner().invoke(app, ["stats"])
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert result.exit_code == 1, result.output
    assert "another process holds it locked, readers too" in " ".join(result.output.split())
