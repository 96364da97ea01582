"""In-process batching on the real Gemma GGUF: samples share one prompt evaluation, prefixes are reused, stops,
refusals by the per-sequence context, and a sampled control token that ends the completion."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from gristmill.app.cli import app
from gristmill.app.generate import RunSettings, open_run, run_generation
from gristmill.models import GenerationParams, PromptRefused
from gristmill.models.base import GenerationResult, TextPiece
from gristmill.models.batch import PromptJob, SampleRequest, common_prefix
from gristmill.models.llama_batch import LlamaBatchEngine
from tests.conftest import write

runner = CliRunner()
START_OF_TURN = 105  # Gemma's <start_of_turn>: a control token that is not end-of-generation


@pytest.fixture
def batch4(gemma):
    engine = LlamaBatchEngine(gemma, 4)
    yield engine
    engine.close()


def drain(engine) -> tuple[dict[int, GenerationResult], dict[int, str]]:
    results, pieces = {}, {}
    while engine.in_flight():
        for event in engine.poll():
            if isinstance(event.event, TextPiece):
                pieces[event.key] = pieces.get(event.key, "") + event.event.text
            else:
                assert isinstance(event.event, GenerationResult), event.event
                results[event.key] = event.event
    return results, pieces


def test_samples_of_one_prompt_evaluate_it_once_and_keep_their_own_seeds(gemma, batch4):
    ids = tuple(gemma.tokenize("Write one sentence about the sea:"))
    params = GenerationParams(max_tokens=16, temperature=1.0)
    batch4.submit(PromptJob(ids, params, tuple(SampleRequest(k, seed=100 + k) for k in range(4))))
    results, pieces = drain(batch4)
    assert batch4.prompt_tokens_evaluated == len(ids)
    assert sorted(r.timings["prompt_tokens_evaluated"] for r in results.values()) == [0, 0, 0, len(ids)]
    assert len({r.text for r in results.values()}) >= 3  # four seeds, not one sample copied four times
    assert all(pieces.get(k, "") == r.text for k, r in results.items())
    assert all(r.completion_tokens == len(r.token_ids) > 0 for r in results.values())
    # the same seeds in the same batch state draw the same samples (a cached prompt is decoded in a different
    # shape than a fresh one, which moves logits by float rounding: so compare two runs from the cache)
    texts = []
    for _ in range(2):
        batch4.submit(PromptJob(ids, params, tuple(SampleRequest(k, seed=100 + k) for k in range(4))))
        texts.append({k: r.text for k, r in drain(batch4)[0].items()})
        assert batch4.prompt_tokens_evaluated == len(ids) + len(texts)  # only the last prompt token again
    assert texts[0] == texts[1]


def evaluated_alone(gemma, ids, params):
    """One prompt on a fresh engine, evaluated in full: what a reused or copied prefix must reproduce."""
    fresh = LlamaBatchEngine(gemma, 4)
    try:
        fresh.submit(PromptJob(ids, params, (SampleRequest(1, 1),)))
        return drain(fresh)[0][1]
    finally:
        fresh.close()


def test_a_prompt_sharing_a_cached_prefix_evaluates_only_the_rest(gemma, batch4):
    header = "The following are questions and their answers.\n\nQ: What is the capital of France?\nA:"
    first = tuple(gemma.tokenize(header + " Paris.\n\nQ: What colour is the sky?\nA:"))
    second = tuple(gemma.tokenize(header + " Paris.\n\nQ: How many legs has a spider?\nA:"))
    params = GenerationParams(max_tokens=12, temperature=0)
    batch4.submit(PromptJob(first, params, (SampleRequest(1, 1),)))
    drain(batch4)
    batch4.submit(PromptJob(second, params, (SampleRequest(2, 1),)))
    reused, _ = drain(batch4)
    shared = common_prefix(first, second)
    assert reused[2].timings["prompt_tokens_evaluated"] == len(second) - shared
    alone = evaluated_alone(gemma, second, params)
    assert alone.timings["prompt_tokens_evaluated"] == len(second)
    # the reused cache holds what a fresh evaluation computes: the greedy answers start the same
    assert reused[2].text[:8] == alone.text[:8] and reused[2].text.strip()


def test_a_prompt_whose_prefix_is_still_being_evaluated_waits_for_it(gemma):
    """Two prompts sharing a long prefix, submitted together: the second copies the first's prefix once it is
    decoded instead of evaluating it too; a third that shares nothing (a BOS token is not worth a copy) evaluates
    in full meanwhile."""
    header = "Below are instructions, each followed by a helpful, accurate response.\n\n" * 4
    first = tuple(gemma.tokenize(header + "Instruction: Name a colour.\nResponse:"))
    second = tuple(gemma.tokenize(header + "Instruction: Name a fruit.\nResponse:"))
    other = tuple(gemma.tokenize("Q: What is two and two?\nA:"))
    shared = common_prefix(first, second)
    params = GenerationParams(max_tokens=8, temperature=0)
    engine = LlamaBatchEngine(gemma, 4)
    engine.n_batch = 16  # the first prompt takes several steps, so the second arrives while it is evaluated
    try:
        engine.submit(PromptJob(first, params, (SampleRequest(1, 1),)))
        engine.poll()
        engine.submit(PromptJob(second, params, (SampleRequest(2, 1),)))
        engine.submit(PromptJob(other, params, (SampleRequest(3, 1),)))
        results, pieces = drain(engine)
    finally:
        engine.close()
    assert results[1].timings["prompt_tokens_evaluated"] == len(first)
    assert results[2].timings["prompt_tokens_evaluated"] == len(second) - shared
    # it shares only the BOS token with the others: not worth copying a whole cache stream for
    assert results[3].timings["prompt_tokens_evaluated"] == len(other)
    assert all(r.text.strip() and pieces[k] == r.text for k, r in results.items())
    # the copied prefix holds what a fresh evaluation computes
    assert results[2].text[:8] == evaluated_alone(gemma, second, params).text[:8]


def test_stop_string_ends_a_batched_sequence_and_is_excluded(gemma, batch4):
    ids = tuple(gemma.tokenize("Q: What is the capital of France?\nA: Paris.\nQ: What is the capital of Spain?\nA:"))
    batch4.submit(PromptJob(ids, GenerationParams(max_tokens=40, temperature=0), (SampleRequest(1, 0),)))
    free = drain(batch4)[0][1]
    assert len(free.text) > 6
    stop = free.text[3:6]
    batch4.submit(PromptJob(ids, GenerationParams(max_tokens=40, temperature=0, stop=(stop,)),
                            (SampleRequest(2, 0), SampleRequest(3, 0))))
    results, pieces = drain(batch4)
    for key in (2, 3):
        assert results[key].finish_reason == "stop" and results[key].text == free.text[: free.text.index(stop)]
        assert pieces.get(key, "") == results[key].text


def test_length_refusal_uses_the_per_sequence_context(gemma):
    engine = LlamaBatchEngine(gemma, 2, n_ctx_seq=256)
    try:
        ids = gemma.tokenize("word " * 200)
        gemma.check_prompt(ids, 100)  # fits the model's 1024-token context...
        with pytest.raises(PromptRefused, match="256 tokens each of the 2 batched sequences"):
            engine.check_prompt(ids, 100)  # ...not one batched sequence's
        engine.check_prompt(ids[:100], 100)
    finally:
        engine.close()


def test_the_pipeline_refuses_what_one_batched_sequence_cannot_hold(tmp_path, gemma, store):
    runner.invoke(app, ["add", str(write(tmp_path / "a.txt", "word " * 200 + "\nshort one\n"))])
    engine = LlamaBatchEngine(gemma, 2, n_ctx_seq=256)
    try:
        run, style, settings = open_run(store, gemma, RunSettings(params=GenerationParams(max_tokens=100)))
        final = run_generation(store, gemma, run, style, settings, concurrent=engine)
    finally:
        engine.close()
    assert (final.done, final.refused) == (1, 1)
    row = store.query("SELECT * FROM generations WHERE status = 'refused'")[0]
    assert "256" in row["error"] and row["completion"] is None and row["prompt_tokens"] > 200


def _control_rows(store):
    return store.query("SELECT completion, completion_tokens, finish_reason, flags, style_meta FROM generations")


def test_a_sampled_control_token_ends_a_batched_completion_and_is_named(tmp_path, gemma, store):
    runner.invoke(app, ["add", str(write(tmp_path / "a.txt", "What is the capital of France?\n"))])
    engine = LlamaBatchEngine(gemma, 4, logit_bias={START_OF_TURN: 100.0})  # forces <start_of_turn>
    try:
        run, style, settings = open_run(store, gemma, RunSettings(samples=2, params=GenerationParams(max_tokens=20)))
        assert run_generation(store, gemma, run, style, settings, concurrent=engine).done == 2
    finally:
        engine.close()
    for row in _control_rows(store):
        assert (row["completion"], row["completion_tokens"], row["finish_reason"]) == ("", 0, "stop")
        assert "control_token" in json.loads(row["flags"])
        assert json.loads(row["style_meta"])["control_token"] == "<start_of_turn>"


def test_a_sampled_control_token_ends_a_single_completion_after_the_text_kept(tmp_path, gemma, store):
    runner.invoke(app, ["add", str(write(tmp_path / "a.txt", "The capital of France is\n"))])
    run, style, settings = open_run(store, gemma, RunSettings(params=GenerationParams(max_tokens=30, temperature=0)))
    calls = []

    def force_after_five(input_ids, scores):  # called once per sampled token
        calls.append(1)
        if len(calls) > 5:
            scores[START_OF_TURN] = 1e9
        return scores

    gemma.logits_processor = [force_after_five]
    try:
        assert run_generation(store, gemma, run, style, settings).done == 1
    finally:
        gemma.logits_processor = None
    row = _control_rows(store)[0]
    free = gemma.generate(gemma.tokenize(store.query("SELECT prompt FROM generations")[0][0]),
                          GenerationParams(max_tokens=5, temperature=0))
    assert row["completion_tokens"] == 5 and row["completion"] == free.text and row["finish_reason"] == "stop"
    assert "<start_of_turn>" not in row["completion"]
    assert "control_token" in json.loads(row["flags"])
    assert json.loads(row["style_meta"])["control_token"] == "<start_of_turn>"


def test_batch_comes_from_the_config_and_is_recorded_on_each_generation(tmp_path, gemma_path):
    write(tmp_path / "gristmill.toml", "[generate]\nbatch = 3\nmax_tokens = 3\n")
    runner.invoke(app, ["add", str(write(tmp_path / "a.txt", "Say hi.\nSay bye.\n"))])
    result = runner.invoke(app, ["generate", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "batch 3" in result.output and "2 done" in result.output
    from gristmill.db import open_store
    with open_store(tmp_path / "test.db") as store:
        timings = [json.loads(r[0]) for r in store.query("SELECT timings FROM generations")]
        run_settings = store.query("SELECT settings FROM runs")[0][0]
    assert [t["batch"] for t in timings] == [3, 3]
    assert "batch" not in json.loads(run_settings)  # not part of the run's identity: resumable at another N
    again = runner.invoke(app, ["generate", "--quiet", "--batch", "1"])
    assert "run 1" in again.output


def test_a_batch_below_one_in_the_config_is_bad_input(tmp_path):
    write(tmp_path / "gristmill.toml", "[generate]\nbatch = 0\n")
    result = runner.invoke(app, ["generate", "--quiet"])
    assert result.exit_code == 2 and "batch" in result.output
