"""Browse and search on a database with a million generations: pages and searches stay index-driven."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from textual.widgets import DataTable

from gristmill.app import browse
from gristmill.app.browse import BrowseFilter
from gristmill.app.tui.app import make_app
from gristmill.app.tui.browse_screen import BrowseScreen
from gristmill.db import open_store
from tests.test_browse import settle, table_ids

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from make_browse_db import INPUT_WORD, OUTPUT_WORD, build  # noqa: E402

N = 1_000_000


@pytest.fixture(scope="module")
def million(tmp_path_factory) -> Path:
    return build(tmp_path_factory.mktemp("million") / "million.db", N)


@pytest.mark.slow
async def test_browse_and_search_a_million_generations(million):
    async with make_app(million, reviewer="ann").run_test(size=(80, 24)) as pilot:
        await pilot.press("b")
        await settle(pilot)
        screen = pilot.app.screen
        assert isinstance(screen, BrowseScreen)
        table = screen.query_one(DataTable)
        assert table.row_count == 100 and table_ids(pilot.app)[:3] == [1, 2, 3]  # one page, never the table
        assert "item 1 of 1,000,000" in str(screen.query_one("#browse-meta").render())
        await pilot.press("slash", *INPUT_WORD, "enter")  # a word that occurs only in inputs
        await settle(pilot)
        assert table_ids(pilot.app)[:2] == [1000, 2000]
        assert "of 1,000 ·" in str(screen.query_one("#browse-meta").render())
        await pilot.press("escape", "slash", *OUTPUT_WORD, "enter")  # planted in ten completions
        await settle(pilot)
        assert table_ids(pilot.app) == list(range(100_000, N + 1, 100_000))
        await pilot.press("right_square_bracket")  # a short result has no next page: says so
        await pilot.press("enter")
        await pilot.pause()
        assert pilot.app.current_mode == "review" and pilot.app.screen.item.generation_id == 100_000


@pytest.mark.slow
def test_the_migration_indexed_every_existing_row_and_triggers_keep_it_in_step(million, tmp_path):
    with open_store(million) as store:
        assert browse.count(store, BrowseFilter(search="topic")) == N
        # every word must match, each in any of instruction, input and output
        assert len(browse.page(store, BrowseFilter(search=f"{OUTPUT_WORD} question"), limit=20).rows) == 10
        assert browse.page(store, BrowseFilter(search=f"{OUTPUT_WORD} zebra")).rows == []
        with store.write() as conn:  # a plain SQL writer: the trigger indexes its text too
            conn.execute("UPDATE generations SET completion = 'a quokka appears' WHERE id = 123456")
        assert [r.generation_id for r in browse.page(store, BrowseFilter(search="quokka")).rows] == [123456]
