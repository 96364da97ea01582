"""Browse and search through Pilot: paged from SQLite, FTS5 search, bulk decisions behind a confirmation."""

from __future__ import annotations

import json

from textual.widgets import DataTable

from gristmill.app import browse
from gristmill.app.browse import BrowseFilter
from gristmill.app.ingest import import_file
from gristmill.app.tui.app import make_app
from gristmill.app.tui.browse_screen import BrowseScreen
from gristmill.app.tui.confirm import ConfirmScreen
from gristmill.db import open_store
from tests.conftest import write
from tests.test_review_app import current, seed_db


async def settle(pilot) -> None:
    """Until the room's pages and counts are in (workers done, and a browse screen's count known)."""
    await pilot.pause()
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()
    while getattr(pilot.app.screen, "count_pending", False) or (
            hasattr(pilot.app.screen, "total") and pilot.app.screen.total is None):
        await pilot.app.workers.wait_for_complete()
        await pilot.pause(0.05)


def table_ids(app) -> list[int]:
    table = app.screen.query_one(DataTable)
    return [int(table.get_row_at(i)[0]) for i in range(table.row_count)]


def planted_db(tmp_path):
    db = seed_db(tmp_path, ["plain answer", "an answer mentioning aardvark", "third answer"], n=6)
    with open_store(db) as store:  # an instruction whose input holds a word nowhere else, added after
        import_file(store, write(tmp_path / "more.jsonl", json.dumps(
            {"instruction": "Summarise this.", "input": "The okapi lives in forests."}) + "\n"))
        from gristmill.app.generate import RunSettings, open_run, run_generation
        from gristmill.models import GenerationParams
        from gristmill.models.fake import FakeEngine
        engine = FakeEngine(replies=["done"], n_ctx=100_000)
        run, style, settings = open_run(store, engine, RunSettings(params=GenerationParams(max_tokens=60_000)))
        run_generation(store, engine, run, style, settings)
    return db


async def test_search_finds_a_planted_word_in_an_output_and_a_word_in_an_input(tmp_path):
    db = planted_db(tmp_path)
    async with make_app(db, reviewer="ann").run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        await pilot.press("slash")
        await settle(pilot)
        assert isinstance(pilot.app.screen, BrowseScreen)
        assert len(table_ids(pilot.app)) == 7
        await pilot.press(*"aardvark", "enter")
        await settle(pilot)
        assert table_ids(pilot.app) == [2, 5]  # the second reply, cycled
        assert "of 2" in str(pilot.app.screen.query_one("#browse-meta").render())
        await pilot.press("escape", "slash", *"okapi", "enter")
        await settle(pilot)
        assert table_ids(pilot.app) == [7]
        await pilot.press("enter")  # opens the item in the review screen
        await pilot.pause()
        assert pilot.app.current_mode == "review" and pilot.app.screen.item.generation_id == 7


async def test_bulk_accept_confirmed_cancelled_and_undone_by_one_u(tmp_path):
    db = planted_db(tmp_path)
    async with make_app(db, reviewer="ann").run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        await pilot.press("b")
        await settle(pilot)
        pilot.app.screen.set_view(BrowseFilter(instruction_type="question"))
        await settle(pilot)
        assert table_ids(pilot.app) == [1, 2, 3, 4, 5, 6]
        await pilot.press("A")
        await pilot.pause()
        assert isinstance(pilot.app.screen, ConfirmScreen)
        await pilot.press("escape")  # cancel: nothing recorded
        await pilot.pause()
        assert set(current(db).values()) == {None}
        await pilot.press("A")
        await pilot.pause()
        await pilot.press("y")
        await settle(pilot)
        assert current(db) == {**{i: "accept" for i in range(1, 7)}, 7: None}
        with open_store(db) as store:
            assert store.query("SELECT count(DISTINCT action_id) FROM reviews")[0][0] == 1
        await pilot.press("u")
        await settle(pilot)
        assert set(current(db).values()) == {None}


async def test_sort_and_pages(tmp_path):
    db = planted_db(tmp_path)
    async with make_app(db, reviewer="ann").run_test(size=(80, 24)) as pilot:
        await pilot.press("b")
        await settle(pilot)
        await pilot.press("O")  # reverse: newest first
        await settle(pilot)
        assert table_ids(pilot.app)[0] == 7
    with open_store(db) as store:
        by_chars = browse.page(store, BrowseFilter(), browse.Sort("chars", True), limit=2).rows
        assert [r.output for r in by_chars] == ["an answer mentioning aardvark"] * 2
        assert [r.generation_id for r in browse.page(store, BrowseFilter(), offset=5, limit=10).rows] == [6, 7]


async def test_pgdn_and_pgup_turn_the_page_as_the_help_says(tmp_path):
    """The table had taken PgDn/PgUp to move its cursor, so only ] and [ paged."""
    db = seed_db(tmp_path, ["an answer"], n=130)
    async with make_app(db, reviewer="ann").run_test(size=(80, 24)) as pilot:
        await pilot.press("b")
        await settle(pilot)
        assert table_ids(pilot.app)[0] == 1
        await pilot.press("pagedown")
        await settle(pilot)
        assert table_ids(pilot.app)[0] == 101 and len(table_ids(pilot.app)) == 30
        await pilot.press("pageup")
        await settle(pilot)
        assert table_ids(pilot.app)[0] == 1
        await pilot.press("right_square_bracket")
        await settle(pilot)
        assert table_ids(pilot.app)[0] == 101


async def test_a_bulk_confirmation_shows_a_search_with_brackets_as_typed(tmp_path):
    """The question names the view, search text included: it was read as markup (a `[/]` crashed the app)."""
    db = planted_db(tmp_path)
    async with make_app(db, reviewer="ann").run_test(size=(80, 24)) as pilot:
        await pilot.press("b")
        await settle(pilot)
        await pilot.press("slash", *"answer [/]", "enter")  # FTS reads the word; [/] is markup to Rich
        await settle(pilot)
        await pilot.press("R")
        await pilot.pause()
        assert isinstance(pilot.app.screen, ConfirmScreen)
        assert "in this view (search 'answer [/]')?" in str(pilot.app.screen.query_one("#question").render())
        await pilot.press("escape")
