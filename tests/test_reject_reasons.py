"""Reject reasons: the picker in the review app, the config list, the review row, stats; and the m008 upgrade."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from gristmill.app.cli import app
from gristmill.app.review import decide
from gristmill.app.tui.app import make_app
from gristmill.db import open_store
from gristmill.db.connection import pending_migrations
from tests.conftest import write
from tests.test_review_app import seed_db

runner = CliRunner()


def reviews(db) -> list[tuple]:
    with open_store(db) as store:
        return [tuple(r) for r in store.query("SELECT generation_id, decision, reason FROM reviews ORDER BY id")]


async def test_reason_picker_rejects_with_the_chosen_reason_and_escape_cancels(tmp_path):
    db = seed_db(tmp_path, ["one", "two", "three", "four"], n=4)
    reasons = ["wrong", "too-long", "rude"]
    async with make_app(db, reviewer="ann", reject_reasons=reasons).run_test() as pilot:
        await pilot.pause()
        await pilot.press("R")
        await pilot.pause()
        options = pilot.app.screen.query_one("#reasons")
        assert [str(options.get_option_at_index(i).prompt) for i in range(options.option_count)] == [
            "1  wrong", "2  too-long", "3  rude"]
        await pilot.press("escape")  # cancelled: nothing recorded, same item
        await pilot.pause()
        assert reviews(db) == [] and pilot.app.screen.item.generation_id == 1
        await pilot.press("R", "2")
        await pilot.pause()
        assert reviews(db) == [(1, "reject", "too-long")] and pilot.app.screen.item.generation_id == 2
        said = [n.message for n in pilot.app._notifications if "#1" in n.message]
        assert said == ["Rejected #1 (too-long) · u undoes"]  # once, when saved
        await pilot.press("R", "9")  # no ninth reason: the picker stays open
        await pilot.pause()
        assert type(pilot.app.screen).__name__ == "ReasonScreen"
        await pilot.press("down", "down", "enter")
        await pilot.pause()
        await pilot.press("r")  # a plain reject still has no reason
        assert reviews(db) == [(1, "reject", "too-long"), (2, "reject", "rude"), (3, "reject", None)]
        await pilot.press("u")  # undo takes a reasoned reject back like any other
        await pilot.press("u")
        await pilot.pause()
        assert pilot.app.screen.item.generation_id == 2
        await pilot.press("question_mark")
        await pilot.pause()
        assert "reject_reason" in str(pilot.app.screen.query_one("Static").render())


async def test_reason_picker_binding_can_be_remapped_by_id(tmp_path):
    db = seed_db(tmp_path, ["one"], n=1)
    async with make_app(db, reviewer="ann", keymap={"reject_reason": "x"}).run_test() as pilot:
        await pilot.pause()
        await pilot.press("x", "1")
        await pilot.pause()
    assert reviews(db) == [(1, "reject", "wrong")]  # the default list starts with "wrong"


def test_config_reasons_are_validated_and_named(tmp_path):
    for bad, message in (('["Wrong Answer"]', "is not a reason key"), ('["a", "a"]', "listed twice"),
                         ('[]', "expected 1 to 9 reasons"), ('"wrong"', "expected")):
        write(tmp_path / "gristmill.toml", f"[review]\nreject_reasons = {bad}\n")
        result = runner.invoke(app, ["stats"])
        assert result.exit_code == 2 and "review.reject_reasons" in result.output and message in result.output, bad
    write(tmp_path / "gristmill.toml", '[review]\nreject_reasons = ["wrong", "rambling"]\n')
    open_store(tmp_path / "test.db").close()  # stats reads an existing database only
    assert runner.invoke(app, ["stats"]).exit_code == 0


def test_stats_count_reasons_of_rejects_in_force_including_rows_written_by_hand(tmp_path):
    db = seed_db(tmp_path, ["a", "b", "c", "d"], n=4)
    with open_store(db) as store:
        decide(store, 1, "reject", "ann", reason="wrong")
        decide(store, 2, "reject", "ann", reason="wrong")
        decide(store, 2, "accept", "ann")  # changed mind: 2's reason no longer counts
        decide(store, 3, "reject", "ann")
        store.conn.execute("INSERT INTO reviews (generation_id, decision, reviewer, created_at, reason) "
                           "VALUES (4, 'reject', 'bob', 't', 'unsafe')")
        with pytest.raises(ValueError, match="reason goes with a reject"):
            decide(store, 1, "accept", "ann", reason="wrong")
    data = json.loads(runner.invoke(app, ["stats", "--json"]).output)
    assert data["reject_reasons"] == {"none": 1, "unsafe": 1, "wrong": 1}


def test_m008_upgrades_an_older_database(tmp_path):
    path = tmp_path / "test.db"
    with open_store(path, stop_before="m008_token_ids_and_reject_reasons") as old:
        assert "m008_token_ids_and_reject_reasons" in pending_migrations(old)
        assert "reason" not in {r[1] for r in old.conn.execute("PRAGMA table_info(reviews)")}
    with open_store(path) as new:
        assert "completion_token_ids" in {r[1] for r in new.conn.execute("PRAGMA table_info(generations)")}
        assert "reason" in {r[1] for r in new.conn.execute("PRAGMA table_info(reviews)")}
