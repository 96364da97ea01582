"""The review app through Pilot: real keys, real SQLite, decisions committed before the screen moves on."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gristmill.app.generate import RunSettings, open_run, run_generation
from gristmill.app.tui.app import make_app
from gristmill.db import open_store
from gristmill.models import GenerationParams
from gristmill.models.fake import FakeEngine
from tests.conftest import write

HOSTILE_OUTPUTS = [
    "[bold]not bold[/] [link=http://x]link[/link] [/]",
    "\x1b[31mred?\x1b[0m \x1b]0;title\x07 bell",
    "x" * 50_000,
    "مرحبا بالعالم שלום 🙂👩‍👩‍👧 zero\u200bwidth",
]


def seed_db(tmp_path, replies, samples: int = 1, n: int = 3):
    lines = [json.dumps({"instruction": f"Instruction {i}", "instruction_type": "question"}) for i in range(n)]
    path = write(tmp_path / "i.jsonl", "\n".join(lines) + "\n")
    from gristmill.app.ingest import import_file
    with open_store(tmp_path / "test.db") as store:
        import_file(store, path)
        engine = FakeEngine(replies=replies, n_ctx=100_000)
        run, style, settings = open_run(store, engine, RunSettings(samples=samples, params=GenerationParams(max_tokens=60_000)))
        run_generation(store, engine, run, style, settings)
    return tmp_path / "test.db"


def decisions(db) -> list[tuple]:
    with open_store(db) as store:
        return [tuple(r) for r in store.query("SELECT generation_id, decision, edited_response, reviewer FROM reviews ORDER BY id")]


def current(db) -> dict[int, str | None]:
    with open_store(db) as store:
        return {r[0]: r[1] for r in store.query("SELECT id, decision FROM generations ORDER BY id")}


async def test_accept_reject_skip_move_and_commit(tmp_path):
    db = seed_db(tmp_path, ["one", "two", "three"], n=4)
    app = make_app(db, reviewer="ann")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        screen = app.screen
        assert screen.item.generation_id == 1
        await pilot.press("a")
        assert decisions(db) == [(1, "accept", None, "ann")]  # committed before the next item shows
        assert screen.item.generation_id == 2
        await pilot.press("r", "s")
        await pilot.press("k")  # back to the item just decided, though it left the unreviewed queue
        assert screen.item.generation_id == 3 and screen.item.decision == "skip"
        await pilot.press("k")
        assert screen.item.generation_id == 2
        await pilot.press("j")  # on through the queue: the next unreviewed
        assert screen.item.generation_id == 4
    assert current(db) == {1: "accept", 2: "reject", 3: "skip", 4: None}


async def test_undo_many_levels_survives_a_restart(tmp_path):
    db = seed_db(tmp_path, ["x"], n=3)
    async with make_app(db, reviewer="ann").run_test() as pilot:
        await pilot.pause()
        await pilot.press("a", "r")
    async with make_app(db, reviewer="ann").run_test() as pilot:  # a new session: the log remembers
        await pilot.pause()
        await pilot.press("u")
        assert pilot.app.screen.item.generation_id == 2
        await pilot.press("u")
        assert pilot.app.screen.item.generation_id == 1
        await pilot.press("u")  # nothing left: a notice, no crash
    assert current(db) == {1: None, 2: None, 3: None}
    with open_store(db) as store:
        assert [r[0] for r in store.query("SELECT decision FROM reviews ORDER BY id")] == ["accept", "reject", "undo", "undo"]


async def test_edit_saves_and_accepts_keeping_the_original_and_diff_shows_it(tmp_path):
    db = seed_db(tmp_path, ["original text"], n=1)
    async with make_app(db, reviewer="ann").run_test() as pilot:
        await pilot.pause()
        await pilot.press("e")
        await pilot.pause()
        editor = pilot.app.screen.query_one("TextArea")
        editor.text = "better text"
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert decisions(db) == [(1, "accept", "better text", "ann")]
        await pilot.press("f")  # show accepted items to look at the diff
        await pilot.pause()
        pilot.app.screen.query_one("#state").value = "accept"
        await pilot.click("#apply")
        await pilot.pause()
        await pilot.press("d")
        await pilot.pause()
        body = str(pilot.app.screen.query_one("#text-body").render())
        assert "-original text" in body and "+better text" in body
    with open_store(db) as store:
        assert store.query("SELECT completion FROM generations")[0][0] == "original text"


async def test_the_editor_shows_control_characters_as_pictures_and_saves_them_byte_for_byte(tmp_path):
    """Textual's text area wrote an output's ESC sequences to the terminal: `\x1b[2J` wiped the dialog, an OSC
    renamed the tmux pane. They show as ␛ and come back as ESC; only the edited word changes."""
    hostile = "\x1b[31mred\x1b[0m \x1b]0;title\x07 cr\rover\x08 \x1b[2J"
    db = seed_db(tmp_path, [hostile], n=1)
    async with make_app(db, reviewer="ann").run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        await pilot.press("e")
        await pilot.pause()
        editor = pilot.app.screen.query_one("TextArea")
        assert editor.text == "␛[31mred␛[0m ␛]0;title␇ cr␍over␈ ␛[2J" and editor.document.line_count == 1
        editor.text = editor.text.replace("red", "blue")
        await pilot.press("ctrl+s")
        await pilot.pause()
    assert decisions(db) == [(1, "accept", hostile.replace("red", "blue"), "ann")]


async def test_an_output_the_editor_cannot_give_back_exactly_is_not_opened(tmp_path):
    """A C1 control has no picture, and a ␛ already there beside an ESC could not be told apart on save."""
    db = seed_db(tmp_path, ["csi \x9b31m", "both \x1b and ␛"], n=2)
    async with make_app(db, reviewer="ann").run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        for _ in range(2):
            await pilot.press("e")
            await pilot.pause()
            assert not pilot.app.screen.query("TextArea")
            await pilot.press("s")
    assert [d[1] for d in decisions(db)] == ["skip", "skip"]


async def test_best_of_n_accepts_one_and_rejects_its_siblings_as_one_undoable_action(tmp_path):
    db = seed_db(tmp_path, ["a", "b", "c"], samples=3, n=2)
    async with make_app(db, reviewer="ann").run_test() as pilot:
        await pilot.pause()
        assert "sample 1 of 3" in str(pilot.app.screen.query_one("#meta").render())
        await pilot.app.workers.wait_for_complete()
        await pilot.pause()
        assert "item 1 of 6" in str(pilot.app.screen.query_one("#meta").render())
        await pilot.press("2")
        assert current(db) == {1: "reject", 2: "accept", 3: "reject", 4: None, 5: None, 6: None}
        assert pilot.app.screen.item.generation_id == 4
        await pilot.app.workers.wait_for_complete()
        await pilot.pause()
        assert "item 1 of 3" in str(pilot.app.screen.query_one("#meta").render())  # the three decided left it
        await pilot.press("u")
        assert current(db) == {i: None for i in range(1, 7)}
        await pilot.press("9")  # no ninth sample: nothing recorded
    assert len(decisions(db)) == 6  # three decisions, three undos


async def test_filter_by_flag_and_type(tmp_path):
    db = seed_db(tmp_path, ["fine", "   ", "fine too"], n=3)  # the second is flagged empty
    async with make_app(db, reviewer="ann").run_test(size=(80, 30)) as pilot:
        await pilot.pause()
        await pilot.press("f")
        await pilot.pause()
        pilot.app.screen.query_one("#flag").value = "empty"
        await pilot.click("#apply")
        await pilot.pause()
        assert pilot.app.screen.item.generation_id == 2
        await pilot.press("a")
        assert pilot.app.screen.item is None  # nothing else is flagged empty
        await pilot.press("f")
        await pilot.pause()
        pilot.app.screen.query_one("#flag").value = pilot.app.screen.query_one("#flag").NULL
        pilot.app.screen.query_one("#state").value = "all"
        pilot.app.screen.query_one("#type").value = "question"  # a choice among the known types
        pilot.app.screen.query_one("#state").focus()
        await pilot.press("enter")  # Enter applies from any field, a closed list included
        await pilot.pause()
        assert pilot.app.screen.item.generation_id == 1
        await pilot.press("f")
        await pilot.pause()
        pilot.app.screen.query_one("#state").value = "reject"
        await pilot.click("#apply")
        await pilot.pause()
        assert pilot.app.screen.item is None


async def test_keymap_remaps_bindings_by_id(tmp_path):
    db = seed_db(tmp_path, ["x"], n=2)
    async with make_app(db, reviewer="ann", keymap={"accept": "y", "reject": "n"}).run_test() as pilot:
        await pilot.pause()
        await pilot.press("a")  # no longer bound
        assert decisions(db) == []
        await pilot.press("y", "n")
        await pilot.press("question_mark")
        await pilot.pause()
        help_text = str(pilot.app.screen.query_one("Static").render())
        assert "y" in help_text and "accept" in help_text
    assert current(db) == {1: "accept", 2: "reject"}


@pytest.mark.parametrize("output", HOSTILE_OUTPUTS)
async def test_hostile_output_displays_literally(tmp_path, output):
    db = seed_db(tmp_path, [output], n=1)
    async with make_app(db, reviewer="ann").run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        shown = pilot.app.screen.query_one("#output").render()
        text = shown.plain if hasattr(shown, "plain") else str(shown)
        if output.startswith("[bold]"):
            assert "[bold]not bold[/]" in text and "[link=http://x]" in text
        if "\x1b" in output:
            assert "\x1b" not in text and "\\x1b[31m" in text
        if len(output) == 50_000:
            assert text.count("x") >= 50_000
        await pilot.press("a")
    assert current(db) == {1: "accept"}


async def test_reviewing_while_another_process_generates(tmp_path, gemma_path):
    lines = [json.dumps({"instruction": f"Give a word for {i}."}) for i in range(15)]
    db = tmp_path / "test.db"
    from gristmill.app.ingest import import_file
    with open_store(db) as store:
        import_file(store, write(tmp_path / "a.jsonl", "\n".join(lines) + "\n"))
    process = subprocess.Popen([sys.executable, "-m", "gristmill", "generate", "--max-tokens", "6", "--quiet"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    import time

    deadline = time.monotonic() + 180
    async with make_app(db, reviewer="ann").run_test() as pilot:
        await pilot.pause()
        # until all 15 are accepted: the generator may finish while the screen waits on an empty queue
        while list(current(db).values()).count("accept") < 15 and time.monotonic() < deadline:
            if pilot.app.screen.item is not None and not pilot.app.saving:  # a key while saving is declined
                await pilot.press("a")
            else:
                await pilot.pause(0.2)
                pilot.app.screen._recheck_when_empty()
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0 and "locked" not in err
    assert list(current(db).values()) == ["accept"] * 15


def test_review_screen_snapshot(tmp_path, snap_compare):
    seed_db(tmp_path, ["Paris is the capital of France.\n[bold]kept literal[/]"], n=2)
    app = make_app(Path("test.db"), reviewer="ann")  # relative: the header shows the same path every run
    assert snap_compare(app, terminal_size=(80, 24), run_before=_settle)


async def _settle(pilot) -> None:
    """Wait for the first screen and the first count (it starts shortly after the screen is up)."""
    await pilot.pause()
    while not pilot.app.counts:
        await pilot.pause(0.05)
    await pilot.pause()


async def test_notifications_show_paths_and_errors_as_written(tmp_path):
    """A screen's notification carries text from outside (an export path, an error, a reject reason): shown as
    written, never read as markup, which crashed the app on a `[/x]` and dropped a `[bold]`."""
    from textual.widgets._toast import Toast

    db = seed_db(tmp_path, ["one"], n=1)
    app = make_app(db, reviewer="ann")
    async with app.run_test(size=(80, 24), notifications=True) as pilot:
        await pilot.pause()
        app.screen.notify("Exported to /tmp/out[/x].jsonl [bold]b[/bold] [Errno 2]")
        await pilot.pause(0.2)
        shown = [str(toast.render()) for toast in app.screen.query(Toast)]
        assert shown == ["Exported to /tmp/out[/x].jsonl [bold]b[/bold] [Errno 2]"]


async def test_ctrl_c_names_the_keys_that_quit_in_plain_text(tmp_path):
    """Textual's own hint is markup: under plain-text notifications it read `Press [b]ctrl+q[/b] to quit`."""
    from textual.widgets._toast import Toast

    db = seed_db(tmp_path, ["one"], n=1)
    app = make_app(db, reviewer="ann")
    async with app.run_test(size=(80, 24), notifications=True) as pilot:
        await pilot.pause()
        await pilot.press("ctrl+c")
        await pilot.pause(0.2)
        shown = " ".join(str(toast.render()) for toast in app.screen.query(Toast))
        assert "Ctrl+C does not quit here" in shown and "Press " in shown and "[b]" not in shown
        assert " q" in shown.split("Press", 1)[1]


async def test_the_queue_length_follows_another_process_without_a_key_pressed(tmp_path):
    """The header said 88 to review while the position line kept `item 1 of 83` until the next key."""
    from gristmill.app import review

    db = seed_db(tmp_path, ["one"], n=3)
    app = make_app(db, reviewer="ann")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.app.workers.wait_for_complete()
        await pilot.pause()
        app.refresh_counts()
        await pilot.app.workers.wait_for_complete()
        await pilot.pause()
        assert "item 1 of 3" in str(app.screen.query_one("#meta").render())
        with open_store(db) as other:  # another reviewer, in another process
            review.decide(other, 3, "reject", "bob")
        app.refresh_counts()
        for _ in range(3):
            await pilot.app.workers.wait_for_complete()
            await pilot.pause()
        assert "item 1 of 2" in str(app.screen.query_one("#meta").render())
