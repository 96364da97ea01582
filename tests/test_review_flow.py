"""The review flow as a new user tries it: decisions confirmed on screen, edits never lost, jump to an id."""

from __future__ import annotations

from textual.widgets import Input, TextArea

from gristmill.app.tui.app import make_app
from gristmill.app.tui.confirm import ConfirmScreen
from gristmill.app.tui.modals import EditScreen, HelpScreen
from tests.test_review_app import current, decisions, seed_db


async def test_every_decision_is_confirmed_on_screen(tmp_path):
    db = seed_db(tmp_path, ["x"], n=3)
    async with make_app(db, reviewer="ann").run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        await pilot.press("a", "r", "s")
        await pilot.pause()
        shown = [n.message for n in pilot.app._notifications]
        assert any("Accepted #1" in m for m in shown) and any("Rejected #2" in m for m in shown)
        assert any("Skipped #3" in m for m in shown)


async def test_edit_shows_the_instruction_asks_before_discarding_and_an_undone_edit_comes_back(tmp_path):
    db = seed_db(tmp_path, ["model text"], n=2)
    async with make_app(db, reviewer="ann").run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        await pilot.press("e")
        await pilot.pause()
        assert isinstance(pilot.app.screen, EditScreen)
        assert "Instruction 0" in str(pilot.app.screen.query_one("#edit-instruction").render())
        pilot.app.screen.query_one(TextArea).text = "my careful edit"
        await pilot.press("escape")  # typed text: asks first
        await pilot.pause()
        assert isinstance(pilot.app.screen, ConfirmScreen)
        await pilot.press("n")
        await pilot.pause()
        assert isinstance(pilot.app.screen, EditScreen)
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert decisions(db) == [(1, "accept", "my careful edit", "ann")]
        await pilot.press("u")  # undo the edit ...
        await pilot.pause()
        assert pilot.app.screen.item.generation_id == 1 and current(db)[1] is None
        await pilot.press("e")  # ... and the editor offers it again
        await pilot.pause()
        assert pilot.app.screen.query_one(TextArea).text == "my careful edit"
        assert pilot.app.screen.query("#restored")  # said while it is so ...
        await pilot.press("ctrl+o")
        await pilot.pause()
        assert pilot.app.screen.query_one(TextArea).text == "model text"
        assert not pilot.app.screen.query("#restored")  # ... and not after ctrl+o put the model output back
        await pilot.press("escape")
        await pilot.pause()
        await pilot.press("y")  # discard
        await pilot.pause()
        assert not isinstance(pilot.app.screen, (EditScreen, ConfirmScreen))


async def test_jump_to_an_id_and_help_lists_keys_as_typed(tmp_path):
    db = seed_db(tmp_path, ["x"], n=5)
    async with make_app(db, reviewer="ann").run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        await pilot.press("number_sign")
        await pilot.pause()
        pilot.app.screen.query_one(Input).value = "4"
        await pilot.press("enter")
        await pilot.pause()
        assert pilot.app.screen.item.generation_id == 4
        await pilot.press("question_mark")
        await pilot.pause()
        assert isinstance(pilot.app.screen, HelpScreen)
        text = str(pilot.app.screen.query_one("Static").render())
        assert "question_mark" not in text and "slash" not in text and "esc closes" in text
        for key, room in (("?", "Help"), ("/", "Search"), ("b", "Browse"), ("g", "Gen"), ("t", "Stats"),
                          ("x", "Export"), ("v", "Review"), ("#", "Go to id")):
            assert any(line.split()[:1] == [key] and room in line for line in text.splitlines()), (key, text)


async def test_the_position_and_the_active_filter_are_always_in_view(tmp_path):
    db = seed_db(tmp_path, ["x"], n=3)
    async with make_app(db, reviewer="ann").run_test(size=(80, 24)) as pilot:
        async def meta() -> str:
            await pilot.app.workers.wait_for_complete()
            await pilot.pause()
            return str(pilot.app.screen.query_one("#meta").render())

        assert "item 1 of 3 · queue: unreviewed" in await meta()
        await pilot.press("j")
        assert "item 2 of 3" in await meta()
        await pilot.press("a")  # #2 leaves the unreviewed queue; #3 is now the second of two
        assert "item 2 of 2" in await meta()
        await pilot.press("k")  # back to the item just decided: no longer in this queue, and it says so
        assert "not in this queue" in await meta()
        await pilot.press("u")  # #2 is back in the queue, which has three items again
        assert "item 2 of 3" in await meta()
        await pilot.press("s", "u", "j", "j")  # skipped, undone, then on to the last: the count kept up
        assert "item 3 of 3" in await meta()
