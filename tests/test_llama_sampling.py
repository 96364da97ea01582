"""Parallel sampling on the real Gemma GGUF draws exactly what `llama_sampler_sample` draws, chain by chain; a
failed draw ends every sequence with an error rather than a traceback; a Ctrl-C waits for the workers."""

from __future__ import annotations

import threading
import time

import llama_cpp as lib
import pytest

from gristmill.models import GenerationParams
from gristmill.models.base import EngineError
from gristmill.models.batch import PromptJob, SampleRequest
from gristmill.models.llama_batch import LlamaBatchEngine
from gristmill.models.llama_sampling import ParallelSampler


@pytest.fixture
def batch8(gemma):
    engine = LlamaBatchEngine(gemma, 8, logit_bias={236764: -2.0}, n_ctx_seq=128)
    yield engine
    engine.close()


def submit_eight(gemma, engine, temperature: float) -> None:
    ids = tuple(gemma.tokenize("Once upon a time"))
    params = GenerationParams(max_tokens=8, temperature=temperature, repeat_penalty=1.3)
    engine.submit(PromptJob(ids, params, tuple(SampleRequest(k, seed=7 + k) for k in range(8))))


@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_parallel_draws_are_the_draws_of_llama_sampler_sample(gemma, batch8, temperature):
    submit_eight(gemma, batch8, temperature)
    entries = batch8._fill_batch()
    assert lib.llama_decode(batch8._ctx, batch8._batch) == 0
    index = entries[0][2]
    assert index is not None
    chains = [slot.sampler for slot in batch8.slots]
    twins = [lib.llama_sampler_clone(chain) for chain in chains]  # same seed, same state
    sampler = ParallelSampler(lib, batch8._n_vocab, workers=2)  # 8 draws, 4 a worker: parallel
    try:
        drawn, expected = [], []
        for _ in range(24):  # the same logits each time: penalties and RNG state move the draws
            drawn.append(sampler.sample(batch8._ctx, [(chain, index) for chain in chains]))
            expected.append([lib.llama_sampler_sample(twin, batch8._ctx, index) for twin in twins])
        assert sampler._pool is not None  # the draws did go to the workers
        assert drawn == expected
        assert len({token for step in drawn for token in step}) > 1  # not one token over and over
    finally:
        sampler.close()
        for twin in twins:
            lib.llama_sampler_free(twin)


class _NoLogits:
    """llama_cpp with `llama_get_logits_ith` finding nothing, as after a decode that produced no outputs."""

    def __getattr__(self, name):
        return getattr(lib, name)

    def llama_get_logits_ith(self, ctx, index):
        return None


def test_a_failed_parallel_draw_ends_every_sequence_with_an_error(gemma, batch8):
    submit_eight(gemma, batch8, 0.9)
    batch8._sampling._lib = _NoLogits()
    events = batch8.poll()
    assert sorted(event.key for event in events) == list(range(8))
    assert all(isinstance(event.event, EngineError) and "no logits" in str(event.event) for event in events)
    assert batch8.in_flight() == 0


class _SlowWorkers(ParallelSampler):
    """Draws that take a while on the pool's threads and a Ctrl-C on the calling thread's first draw."""

    def __init__(self):
        super().__init__(_NoLogits(), n_vocab=4, workers=2)
        self.finished: list[int] = []

    def _draw(self, chain, logits):
        if threading.current_thread() is threading.main_thread():
            raise KeyboardInterrupt
        time.sleep(0.05)
        self.finished.append(chain)
        return chain


def test_a_ctrl_c_while_drawing_returns_only_after_every_worker_let_go_of_its_chain(monkeypatch):
    sampler = _SlowWorkers()
    monkeypatch.setattr(_NoLogits, "llama_get_logits_ith", lambda self, ctx, index: 1)
    with pytest.raises(KeyboardInterrupt):
        sampler.sample(None, [(chain, 0) for chain in range(8)])
    assert sorted(sampler.finished) == [4, 5, 6, 7]  # the second half, on the worker, ran to its end
    sampler.close()
