"""The stats room and the export dialog through Pilot: the same numbers and bytes as the command line."""

from __future__ import annotations

import json

from textual.widgets import Input
from typer.testing import CliRunner

from gristmill.app import review
from gristmill.app.cli import app as cli
from gristmill.app.tui.app import make_app
from gristmill.app.tui.export_screen import ExportScreen
from gristmill.app.tui.stats_screen import StatsScreen
from gristmill.db import open_store
from tests.test_browse import settle
from tests.test_review_app import seed_db

runner = CliRunner()


async def open_export(pilot, path) -> ExportScreen:
    """The export dialog over the review room, its file field set to `path`."""
    await pilot.pause()
    await pilot.press("x")
    await pilot.pause()
    screen = pilot.app.screen
    assert isinstance(screen, ExportScreen)
    screen.query_one("#path", Input).value = str(path)
    return screen


def decided_db(tmp_path):
    db = seed_db(tmp_path, ["Paris.", "A longer answer about rivers.", "x"], samples=1, n=9)
    with open_store(db) as store:
        for g in range(1, 9):
            review.decide(store, g, "accept" if g % 3 else "reject", "ann" if g < 5 else "bob")
    return db


async def test_stats_room_shows_the_numbers_of_stats_json(tmp_path):
    db = decided_db(tmp_path)
    result = runner.invoke(cli, ["--db", str(db), "stats", "--json"])
    assert result.exit_code == 0, result.output
    expected = json.loads(result.output)
    assert expected["acceptance"]["reviewer"]["ann"] == {"accept": 3, "reject": 1, "skip": 0, "rate": 0.75}
    assert sum(expected["response_lengths"]["accept"]) == 6 and sum(expected["response_lengths"]["reject"]) == 2
    async with make_app(db, reviewer="ann").run_test(size=(80, 24)) as pilot:
        await pilot.press("t")
        await settle(pilot)
        screen = pilot.app.screen
        assert isinstance(screen, StatsScreen)
        assert screen.data == expected
        assert "accept 6" in str(screen.query_one("#summary").render())


async def test_export_from_the_app_writes_the_same_bytes_as_the_cli(tmp_path):
    db = decided_db(tmp_path)
    result = runner.invoke(cli, ["--db", str(db), "export", str(tmp_path / "cli.jsonl")])
    assert result.exit_code == 0, result.output
    async with make_app(db, reviewer="ann").run_test(size=(80, 24)) as pilot:
        await open_export(pilot, tmp_path / "app.jsonl")
        await pilot.press("enter")
        await settle(pilot)
        report = pilot.app.screen.report
        shown = str(pilot.app.screen.query_one("#result").render())
        assert f"{report.records} record(s) written" in shown and "app.jsonl.manifest.json" in shown
        assert "dedup dropped" in shown
    app_bytes = (tmp_path / "app.jsonl").read_bytes()
    assert app_bytes == (tmp_path / "cli.jsonl").read_bytes() and app_bytes.count(b"\n") == report.records > 0
    assert (tmp_path / "app.jsonl.manifest.json").exists()


async def test_the_export_report_can_be_read_whole_at_80x24(tmp_path):
    """With the cut-short and control-token lines the report ran below the screen's edge, and nothing scrolled."""
    db = decided_db(tmp_path)
    with open_store(db) as store:  # every accepted answer cut short, so the report has its longest lines
        store.conn.execute("UPDATE generations SET flags = '[\"truncated\"]'")
        store.conn.commit()
    async with make_app(db, reviewer="ann").run_test(size=(80, 24)) as pilot:
        screen = await open_export(pilot, tmp_path / "app.jsonl")
        await pilot.press("enter")
        await settle(pilot)
        result = screen.query_one("#result")
        assert "cut short: 6 accepted answer(s)" in " ".join(str(result.render()).split())
        dialog = screen.query_one("#export")
        assert dialog.has_focus and dialog.max_scroll_y > 0  # taller than the screen: it scrolls, and has the keys
        top = result.region.y
        assert 0 <= top < 24  # the report's first line is in view
        await pilot.press("end")
        await pilot.pause()
        assert dialog.scroll_y == dialog.max_scroll_y  # and its last lines can be reached from the keyboard


async def test_enter_exports_from_a_closed_list_as_the_dialog_says(tmp_path):
    """Enter on a chosen format had opened the list again; only ctrl+s exported from there. Space opens a list,
    and an open list still takes Enter as its choice (as in the review filter)."""
    from textual.widgets import Select

    db = decided_db(tmp_path)
    async with make_app(db, reviewer="ann").run_test(size=(80, 24)) as pilot:
        screen = await open_export(pilot, tmp_path / "app.jsonl")
        screen.query_one("#format", Select).focus()
        await pilot.press("space")  # opens the list
        await pilot.pause()
        assert screen.report is None and screen.query_one("#format", Select).expanded
        await pilot.press("down", "enter")  # the list takes Enter as its choice
        await pilot.pause()
        chosen = screen.query_one("#format", Select).value
        assert screen.report is None and not screen.query_one("#format", Select).expanded
        await pilot.press("enter")  # from the closed list: export
        await settle(pilot)
        assert screen.report is not None and chosen != "native"
        manifest = json.loads((tmp_path / "app.jsonl.manifest.json").read_text())
        assert manifest["format"] == chosen
