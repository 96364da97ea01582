"""The generate room through Pilot on the real Gemma model: start, live progress, stop, resume."""

from __future__ import annotations

import json

import pytest
from textual.widgets import Input, ProgressBar, Select, Static

from gristmill.app.config import GenerateConfig
from gristmill.app.ingest import import_file
from gristmill.app.tui.app import make_app
from gristmill.app.tui.generate_screen import GenerateScreen
from gristmill.db import open_store
from tests.conftest import write


async def wait_until(pilot, condition) -> None:
    """Poll the app until `condition()` holds (pytest-timeout bounds a hang); no timing is asserted."""
    while not condition():
        await pilot.pause(0.05)


def statuses(db) -> dict[int, str]:
    with open_store(db) as store:
        return {r[0]: r[1] for r in store.query("SELECT id, status FROM generations ORDER BY id")}


ITEMS = 6


@pytest.mark.slow
async def test_start_watch_stop_and_resume_on_the_real_model(tmp_path, gemma_path):
    db = tmp_path / "test.db"
    with open_store(db) as store:
        import_file(store, write(tmp_path / "i.jsonl", "\n".join(
            json.dumps({"instruction": f"Name a colour, number {i}."}) for i in range(ITEMS)) + "\n"))
    # batched, with fewer sequences than items, so the stop finds items not yet started whatever the machine's
    # speed (with every item in flight at once, all of them could finish before the stop is seen)
    config = GenerateConfig(model=str(gemma_path), max_tokens=12, threads=2, n_ctx=512, batch=2)
    app = make_app(db, reviewer="ann", generate_config=config)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("g")
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, GenerateScreen)
        assert screen.query_one("#max_tokens", Input).value == "12"
        await pilot.press("ctrl+s")
        live = screen.query_one("#live-text", Static)
        await wait_until(pilot, lambda: live.render().plain != "")  # the first item is streaming
        # a short answer may finish before the stop lands: what matters is what the stop leaves behind
        await pilot.press("ctrl+x")  # stop: checked on every piece, the item in flight stays pending
        await wait_until(pilot, lambda: not screen.running)
        assert "resumable" in str(screen.query_one("#status", Static).render())
        left = list(statuses(db).values())
        assert set(left) <= {"pending", "done"} and "pending" in left  # nothing half-written, nothing failed
        run_id = screen.started.run_id
    # a new session with other defaults (no model named): choosing the run resumes it with its own
    # settings and the model file it was made with
    app = make_app(db, reviewer="ann", generate_config=GenerateConfig(threads=2, n_ctx=512))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("g")
        await pilot.pause()
        screen = app.screen
        screen.query_one("#run", Select).value = run_id
        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: screen.progress is not None)
        first = screen.progress
        assert first.finished >= 1 and first.total == ITEMS and first.run_id == run_id
        assert screen.query_one(ProgressBar).total == ITEMS
        assert "tok/s" in str(screen.query_one("#status", Static).render())
        await wait_until(pilot, lambda: not screen.running)
        assert "Finished" in str(screen.query_one("#status", Static).render())
    assert set(statuses(db).values()) == {"done"} and len(statuses(db)) == ITEMS
    with open_store(db) as store:
        assert store.query("SELECT count(*) FROM runs")[0][0] == 1
        assert max(r[0] for r in store.query("SELECT completion_tokens FROM generations")) <= 12


def test_stop_while_the_model_loads_ends_the_load(tmp_path, gemma_path):
    """The room's Stop during a load: a 32B model loads for a minute, and Stop had waited for all of it."""
    from gristmill.app.generate_session import run_job

    db = tmp_path / "test.db"
    with open_store(db) as store:
        import_file(store, write(tmp_path / "i.jsonl", '{"instruction": "Name a colour."}\n'))
    asked: list[int] = []

    def stop_on_the_third_load_step() -> bool:
        asked.append(1)
        return len(asked) >= 3

    def not_reached(*args) -> None:
        raise AssertionError("the run opened after Stop")

    config = GenerateConfig(model=str(gemma_path), max_tokens=4, threads=2, n_ctx=256)
    result = run_job(
        db, config, on_started=not_reached, on_progress=not_reached, on_piece=not_reached,
        should_stop=stop_on_the_third_load_step,
    )
    assert result is None and len(asked) <= 4
    with open_store(db) as store:
        assert store.query("SELECT count(*) FROM runs")[0][0] == 0


def test_the_live_text_survives_heartbeats_and_starts_again_when_an_item_finishes(tmp_path, monkeypatch):
    """The scheduler reports progress every few seconds while an item is still being written; the room had
    cleared its live text on every report, so a slow item's text vanished every 5 seconds."""
    import time

    import gristmill.app.scheduler as scheduler
    from gristmill.app.generate import RunSettings, open_run, run_generation
    from gristmill.app.ingest import import_file
    from gristmill.app.tui.generate_screen import LiveTail
    from gristmill.db import open_store
    from gristmill.models import GenerationParams
    from gristmill.models.fake import FakeEngine
    from tests.conftest import write

    class Slow(FakeEngine):
        def stream(self, ids, params):
            for event in super().stream(ids, params):
                time.sleep(0.01)  # ten times the heartbeat's period below, over a whole reply
                yield event

    monkeypatch.setattr(scheduler, "HEARTBEAT_S", 0.001)
    replies = [" one two three four five six", " seven eight nine ten"]
    tail, shown_when_finished, beats = LiveTail(), [], []

    def progressed(progress):
        beats.append(progress.processed)
        if progress.processed != tail.finished:
            shown_when_finished.append("".join(tail.parts))
        tail.progressed(progress)

    with open_store(tmp_path / "live.db") as store:
        import_file(store, write(tmp_path / "i.txt", "first\nsecond\n"))
        engine = Slow(replies=replies)
        run, style, settings = open_run(store, engine, RunSettings(params=GenerationParams(max_tokens=60)))
        run_generation(store, engine, run, style, settings, on_piece=tail.piece, on_progress=progressed)
        stored = [r[0] for r in store.query("SELECT completion FROM generations ORDER BY id")]
    assert beats.count(0) >= 2  # heartbeats came while the first item was still being written
    assert shown_when_finished == stored  # each item's whole text was in view when it finished
