"""One snapshot per room at 80x24 (update only after looking at the diff: pytest --snapshot-update)."""

from __future__ import annotations

from pathlib import Path

from gristmill.app import review
from gristmill.app.tui.app import make_app
from gristmill.db import open_store
from tests.test_review_app import seed_db

REPLIES = ["Paris is the capital of France.", "The capital is Paris, a city on the Seine.", "Lyon."]


def seeded(tmp_path, samples: int = 3) -> Path:
    seed_db(tmp_path, REPLIES, samples=samples, n=4)
    with open_store(tmp_path / "test.db") as store:
        for g in range(1, 7):
            review.decide(store, g, "accept" if g % 2 else "reject", "ann")
    return Path("test.db")  # relative: the header shows the same name every run


def room(*keys: str):
    async def run_before(pilot) -> None:
        await pilot.pause()
        while not pilot.app.counts:
            await pilot.pause(0.05)
        for key in keys:
            await pilot.press(key)
            await pilot.pause()
        await pilot.app.workers.wait_for_complete()
        await pilot.pause()
    return run_before


class TestRooms:
    def test_review_compare(self, tmp_path, snap_compare):
        db = seeded(tmp_path)
        assert snap_compare(make_app(db, reviewer="ann"), terminal_size=(80, 24), run_before=room())

    def test_browse(self, tmp_path, snap_compare):
        db = seeded(tmp_path)
        assert snap_compare(make_app(db, reviewer="ann"), terminal_size=(80, 24), run_before=room("b"))

    def test_generate(self, tmp_path, snap_compare):
        db = seeded(tmp_path)
        assert snap_compare(make_app(db, reviewer="ann"), terminal_size=(80, 24), run_before=room("g"))

    def test_stats(self, tmp_path, snap_compare):
        db = seeded(tmp_path)
        assert snap_compare(make_app(db, reviewer="ann"), terminal_size=(80, 24), run_before=room("t"))

    def test_export_dialog(self, tmp_path, snap_compare):
        db = seeded(tmp_path)
        assert snap_compare(make_app(db, reviewer="ann"), terminal_size=(80, 24), run_before=room("x"))

    def test_help(self, tmp_path, snap_compare):
        db = seeded(tmp_path)
        assert snap_compare(make_app(db, reviewer="ann"), terminal_size=(80, 24), run_before=room("question_mark"))
