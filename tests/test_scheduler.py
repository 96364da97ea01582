"""The scheduler's logic with a fake concurrent engine (fast); the real batched engine is tested in test_batch.py."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from gristmill.app.cli import app
from gristmill.app.generate import RunSettings, open_run, run_generation
from gristmill.models import GenerationParams
from gristmill.models.base import EngineError, TextPiece
from gristmill.models.batch import ConcurrentEngine, PromptJob, SequenceEvent
from gristmill.models.fake import FakeEngine
from tests.conftest import write

runner = CliRunner()


class FakeBatch(ConcurrentEngine):
    """Up to `n` fake streams in flight; each poll advances every one by one event, so they finish out of order."""

    def __init__(self, engine: FakeEngine, n: int):
        self.engine, self.n = engine, n
        self.streams: dict[int, object] = {}
        self.jobs: list[PromptJob] = []
        self.in_flight_seen: list[int] = []
        self.cancelled: list[int] = []

    @property
    def capacity(self) -> int:
        return self.n

    def in_flight(self) -> int:
        return len(self.streams)

    def submit(self, job: PromptJob) -> None:
        assert len(job.samples) <= self.free_slots()
        self.jobs.append(job)
        for sample in job.samples:
            from dataclasses import replace
            self.streams[sample.key] = iter(self.engine.stream(job.ids, replace(job.params, seed=sample.seed)))

    def poll(self, timeout=None) -> list[SequenceEvent]:
        self.in_flight_seen.append(len(self.streams))
        events = []
        for key, stream in list(self.streams.items()):
            try:
                event = next(stream)
            except Exception as error:
                event = EngineError(str(error))
            events.append(SequenceEvent(key, event))
            if not isinstance(event, TextPiece):
                del self.streams[key]
        return events

    def cancel(self) -> list[int]:
        keys = list(self.streams)
        self.cancelled.extend(keys)
        self.streams.clear()
        return keys


def add(tmp_path, lines: list[str]) -> None:
    result = runner.invoke(app, ["add", str(write(tmp_path / "a.txt", "\n".join(lines) + "\n"))])
    assert result.exit_code == 0, result.output


def test_slots_stay_full_and_each_item_is_committed_when_it_finishes(tmp_path, store):
    add(tmp_path, [f"item number {i} " + "x" * (i % 5) for i in range(12)])
    fake = FakeEngine(replies=["a", "bbbbbbbb", "ccc", "dddddd"])  # different lengths: finishes out of order
    batch = FakeBatch(fake, 4)
    run, style, settings = open_run(store, fake, RunSettings(params=GenerationParams(max_tokens=20)))
    committed_at_progress = []

    def on_progress(p):
        status = store.query("SELECT status FROM generations WHERE id = ?", [p.last_generation_id])[0][0]
        committed_at_progress.append(status)

    final = run_generation(store, fake, run, style, settings, concurrent=batch, on_progress=on_progress)
    assert final.done == 12 and committed_at_progress == ["done"] * 12
    # while work remained, every poll saw all four slots busy: a freed slot was filled at once
    assert batch.in_flight_seen[:6] == [4] * 6 and max(batch.in_flight_seen) == 4
    rows = store.query("SELECT completion, timings FROM generations")
    assert all(json.loads(r["timings"])["batch"] == 4 for r in rows)


def test_samples_of_one_prompt_go_as_one_job(tmp_path, store):
    add(tmp_path, ["first", "second"])
    fake = FakeEngine()
    batch = FakeBatch(fake, 6)
    run, style, settings = open_run(store, fake, RunSettings(samples=3, params=GenerationParams(max_tokens=30)))
    assert run_generation(store, fake, run, style, settings, concurrent=batch).done == 6
    assert [len(job.samples) for job in batch.jobs] == [3, 3]
    seeds = {r[0]: r[1] for r in store.query("SELECT id, seed FROM generations")}
    for job in batch.jobs:
        assert all(sample.seed == seeds[sample.key] for sample in job.samples)  # each sample keeps its own seed


def test_more_samples_than_slots_are_split(tmp_path, store):
    add(tmp_path, ["only one"])
    fake = FakeEngine()
    batch = FakeBatch(fake, 2)
    run, style, settings = open_run(store, fake, RunSettings(samples=5, params=GenerationParams(max_tokens=30)))
    assert run_generation(store, fake, run, style, settings, concurrent=batch).done == 5
    assert sorted(len(job.samples) for job in batch.jobs) == [1, 2, 2]


def test_prefix_order_changes_when_an_item_runs_never_its_prompt(tmp_path, tmp_path_factory):
    from gristmill.db import open_store
    add(tmp_path, [f"Question {i}: what is {i * 7} plus {i}?" for i in range(30)])
    prompts, orders = [], []
    for prefix_order in (False, True):
        with open_store(tmp_path_factory.mktemp("db") / "x.db") as store:
            runner.invoke(app, ["--db", str(store.path), "add", str(tmp_path / "a.txt")])
            fake = FakeEngine()
            batch = FakeBatch(fake, 3)
            run, style, settings = open_run(store, fake, RunSettings(style="few-shot",
                                                                      params=GenerationParams(max_tokens=30)))
            run_generation(store, fake, run, style, settings, concurrent=batch, prefix_order=prefix_order)
            prompts.append({r[0]: r[1] for r in store.query("SELECT id, prompt FROM generations")})
            orders.append([s.key for job in batch.jobs for s in job.samples])
    assert prompts[0] == prompts[1] and len(prompts[0]) == 30
    assert orders[0] == sorted(orders[0]) and orders[1] != orders[0]  # naive: id order; prefix-aware: grouped

    def shared(order, prompt_of):
        return sum(_common_prefix(prompt_of[a], prompt_of[b]) for a, b in zip(order, order[1:], strict=False))
    assert shared(orders[1], prompts[1]) > shared(orders[0], prompts[0])


def _common_prefix(a: str, b: str) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def test_refusals_are_committed_before_submit_and_never_reach_the_engine(tmp_path, store):
    add(tmp_path, ["short", "long " * 60, "short too"])
    fake = FakeEngine(n_ctx=120)
    batch = FakeBatch(fake, 4)
    run, style, settings = open_run(store, fake, RunSettings(params=GenerationParams(max_tokens=20)))
    final = run_generation(store, fake, run, style, settings, concurrent=batch)
    assert (final.done, final.refused) == (2, 1)
    refused_id = store.query("SELECT id FROM generations WHERE status = 'refused'")[0][0]
    assert refused_id not in {s.key for job in batch.jobs for s in job.samples}


def test_consecutive_failures_stop_the_run_and_in_flight_items_stay_pending(tmp_path, store):
    add(tmp_path, [f"BOOM {i}" for i in range(10)])
    fake = FakeEngine(fail_on="BOOM")
    batch = FakeBatch(fake, 3)
    run, style, settings = open_run(store, fake, RunSettings(params=GenerationParams(max_tokens=20)))
    with pytest.raises(RuntimeError, match="failed in a row"):
        run_generation(store, fake, run, style, settings, concurrent=batch)
    counts = dict(store.query("SELECT status, count(*) FROM generations GROUP BY status"))
    assert counts["failed"] == 5 and counts["pending"] == 5


def test_stop_request_cancels_in_flight_work_which_stays_pending(tmp_path, store):
    add(tmp_path, [f"item {i}" for i in range(10)])
    fake = FakeEngine(replies=["short", "a long reply " * 3, "a longer reply " * 3, "the longest reply " * 3])
    batch = FakeBatch(fake, 4)
    run, style, settings = open_run(store, fake, RunSettings(params=GenerationParams(max_tokens=60)))
    finished = []
    final = run_generation(store, fake, run, style, settings, concurrent=batch,
                           on_progress=finished.append, should_stop=lambda: len(finished) >= 2)
    assert final.done >= 2 and len(batch.cancelled) > 0
    counts = dict(store.query("SELECT status, count(*) FROM generations GROUP BY status"))
    assert counts["done"] == final.done and counts["pending"] == 10 - final.done
    again = run_generation(store, fake, run, style, settings, concurrent=FakeBatch(fake, 4))
    assert again.done == 10


def test_pieces_reach_on_piece_one_completion_at_a_time(tmp_path, store):
    add(tmp_path, [f"item {i}" for i in range(6)])
    fake = FakeEngine(replies=["one two", "three", "four five six", "seven"])
    batch = FakeBatch(fake, 3)
    run, style, settings = open_run(store, fake, RunSettings(params=GenerationParams(max_tokens=60)))
    pieces: list[str] = []
    run_generation(store, fake, run, style, settings, concurrent=batch, on_piece=pieces.append)
    submitted = [s.key for job in batch.jobs for s in job.samples]
    completions = {r[0]: r[1] for r in store.query("SELECT id, completion FROM generations")}
    assert "".join(pieces) == "".join(completions[key] for key in submitted)


@pytest.mark.parametrize("batch", [None, 2])
def test_an_engine_error_fails_that_item_only_and_keeps_what_it_was_fed(tmp_path, store, batch):
    add(tmp_path, ["fine", "BOOM", "fine again"])
    fake = FakeEngine(fail_on="BOOM")
    final = run_generation(store, fake, *open_run(store, fake, RunSettings(params=GenerationParams(max_tokens=9))),
                           concurrent=FakeBatch(fake, batch) if batch else None)
    assert (final.done, final.failed) == (2, 1)
    prompt, tokens, digest = store.query(
        "SELECT prompt, prompt_tokens, prompt_token_ids_sha256 FROM generations WHERE status = 'failed'")[0]
    assert "BOOM" in prompt and tokens == len(fake.tokenize(prompt)) and digest


def test_progress_is_posted_while_nothing_finishes_saying_how_long(tmp_path, store, monkeypatch):
    """A server that holds its connections without answering left a logged run silent; now the progress keeps
    coming, with the items in flight and the seconds since one last finished."""
    import time

    import gristmill.app.scheduler as scheduler

    class Stalled(FakeBatch):
        """Answers nothing for the first 0.6 s, as a server that hangs, then goes on."""

        def poll(self, timeout=None):
            if time.perf_counter() < self.until:
                time.sleep(0.02)
                return []
            return super().poll(timeout)

    monkeypatch.setattr(scheduler, "HEARTBEAT_S", 0.1)
    add(tmp_path, ["one", "two"])
    fake = FakeEngine(replies=["fine"])
    batch = Stalled(fake, 2)
    batch.until = time.perf_counter() + 0.6
    posted: list = []
    run_generation(store, fake, *open_run(store, fake, RunSettings(params=GenerationParams(max_tokens=9))),
                   concurrent=batch, on_progress=posted.append)
    waiting = [p for p in posted if p.finished == 0]
    assert len(waiting) >= 3 and all(p.in_flight == 2 for p in waiting)
    assert waiting[-1].idle_s > waiting[0].idle_s >= 0.1
    assert posted[-1].finished == 2 and posted[-1].in_flight == 0


def test_the_live_text_holds_the_shown_item_whole_when_others_finish_first(tmp_path, store):
    """Several sequences finish out of order; only the shown one's end starts the room's live text again (another
    item finishing had wiped the shown item's text mid-way)."""
    from gristmill.app.tui.generate_screen import LiveTail

    add(tmp_path, [f"item {i}" for i in range(6)])
    fake = FakeEngine(replies=[" a long reply that keeps going for a while", " short", " mid length reply"])
    tail, shown_at_finish, others_finished = LiveTail(), {}, []

    def progressed(progress):
        if progress.processed != tail.finished:
            if progress.last_generation_id == progress.shown_id:
                shown_at_finish[progress.last_generation_id] = "".join(tail.parts)
            else:
                others_finished.append(progress.last_generation_id)
        tail.progressed(progress)

    run_generation(store, fake, *open_run(store, fake, RunSettings(params=GenerationParams(max_tokens=60))),
                   concurrent=FakeBatch(fake, 3), on_piece=tail.piece, on_progress=progressed)
    stored = {r[0]: r[1] for r in store.query("SELECT id, completion FROM generations")}
    assert others_finished and len(shown_at_finish) >= 2  # both cases happened
    assert all(text == stored[gid] for gid, text in shown_at_finish.items())
