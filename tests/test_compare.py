"""Compare samples and best-of-N: the key picks the sample whose number the screen shows."""

from __future__ import annotations

from gristmill.app import review
from gristmill.app.tui.app import make_app
from gristmill.app.tui.compare import ComparePanes, SamplePane
from gristmill.db import open_store
from tests.test_review_app import current, decisions, seed_db


def set_status(db, generation_id: int, status: str) -> None:
    with open_store(db) as store, store.write() as conn:
        conn.execute("UPDATE generations SET status = ?, completion = CASE WHEN ? = 'pending' THEN NULL "
                     "ELSE completion END WHERE id = ?", (status, status, generation_id))


async def test_compare_shows_every_sample_numbered_and_the_key_picks_the_one_shown(tmp_path):
    db = seed_db(tmp_path, ["alpha", "beta", "gamma"], samples=3, n=2)
    async with make_app(db, reviewer="ann").run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        panes = pilot.app.screen.query(SamplePane)
        assert [p.border_title.split(" · ")[0].lstrip("▶ ") for p in panes] == ["1", "2", "3"]
        shown = pilot.app.screen.query_one(ComparePanes).texts()
        assert shown == {1: "alpha", 2: "beta", 3: "gamma"}
        assert not pilot.app.screen.query_one(ComparePanes).has_class("side-by-side")  # 80 columns: stacked
        await pilot.press("3")
        assert current(db)[3] == "accept" and current(db)[1] == current(db)[2] == "reject"
        with open_store(db) as store:
            assert store.query("SELECT completion FROM generations WHERE id = 3")[0][0] == shown[3]
    async with make_app(db, reviewer="ann").run_test(size=(160, 40)) as pilot:
        await pilot.pause()
        assert pilot.app.screen.query_one(ComparePanes).has_class("side-by-side")
        await pilot.press("c")  # compare off: one sample at a time
        assert not pilot.app.screen.has_class("comparing")


async def test_the_number_is_the_samples_own_even_when_an_earlier_one_failed(tmp_path):
    db = seed_db(tmp_path, ["alpha", "beta", "gamma"], samples=3, n=1)
    set_status(db, 1, "failed")  # sample 1 failed: "sample 2" is still generation 2
    async with make_app(db, reviewer="ann").run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        assert pilot.app.screen.item.generation_id == 2
        assert "sample 2 of 3" in str(pilot.app.screen.query_one("#meta").render())
        await pilot.press("1")  # the failed one has no text: refused, says so
        assert decisions(db) == []
        await pilot.press("2")
    assert current(db) == {1: "reject", 2: "accept", 3: "reject"}


async def test_a_pick_is_refused_while_a_sample_is_pending_and_undo_reverts_a_whole_pick(tmp_path):
    db = seed_db(tmp_path, ["alpha", "beta", "gamma"], samples=3, n=1)
    set_status(db, 3, "pending")
    with open_store(db) as store:
        pick = review.pick_best(store, 1, 2, "ann")
        assert not pick.ok and "3" in pick.message and "not generated yet" in pick.message
        assert not review.pick_best(store, 1, 7, "ann").ok
        assert "no sample 7" in review.pick_best(store, 1, 7, "ann").message
    assert decisions(db) == []
    set_status(db, 3, "done")
    async with make_app(db, reviewer="ann").run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        await pilot.press("a")  # accept sample 1 on its own first
        await pilot.press("k")
        await pilot.pause()
    with open_store(db) as store:
        assert review.pick_best(store, 1, 2, "ann").ok  # picking 2 rejects the accepted 1: never two accepts
    assert current(db) == {1: "reject", 2: "accept", 3: "reject"}
    with open_store(db) as store:
        assert sorted(review.undo(store, "ann")) == [1, 2, 3]
    assert current(db) == {1: "accept", 2: None, 3: None}


async def test_a_sample_that_finished_after_it_was_shown_is_shown_before_any_pick(tmp_path):
    db = seed_db(tmp_path, ["alpha", "beta"], samples=2, n=1)
    set_status(db, 2, "pending")
    async with make_app(db, reviewer="ann").run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        assert [s.status for s in pilot.app.screen.query_one(ComparePanes).samples] == ["done", "pending"]
        with open_store(db) as store, store.write() as conn:  # the generator finishes sample 2 meanwhile
            conn.execute("UPDATE generations SET status = 'done', completion = 'late beta' WHERE id = 2")
        await pilot.press("1")  # the screen still says "pending": no decision on unseen text
        assert decisions(db) == []
        await pilot.pause()
        assert pilot.app.screen.query_one(ComparePanes).texts() == {1: "alpha", 2: "late beta"}
        await pilot.press("1")
    assert current(db) == {1: "accept", 2: "reject"}
