"""Parallel sampling on the real Gemma GGUF draws exactly what `llama_sampler_sample` draws, chain by chain."""

from __future__ import annotations

import llama_cpp as lib
import pytest

from gristmill.models import GenerationParams
from gristmill.models.batch import PromptJob, SampleRequest
from gristmill.models.llama_batch import LlamaBatchEngine
from gristmill.models.llama_sampling import ParallelSampler


@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_parallel_draws_are_the_draws_of_llama_sampler_sample(gemma, temperature):
    engine = LlamaBatchEngine(gemma, 8, logit_bias={236764: -2.0}, n_ctx_seq=128)
    try:
        ids = tuple(gemma.tokenize("Once upon a time"))
        params = GenerationParams(max_tokens=8, temperature=temperature, repeat_penalty=1.3)
        engine.submit(PromptJob(ids, params, tuple(SampleRequest(k, seed=7 + k) for k in range(8))))
        entries = engine._fill_batch()
        assert lib.llama_decode(engine._ctx, engine._batch) == 0
        index = entries[0][2]
        assert index is not None
        chains = [slot.sampler for slot in engine.slots]
        twins = [lib.llama_sampler_clone(chain) for chain in chains]  # same seed, same state
        sampler = ParallelSampler(lib, engine._n_vocab, workers=2)  # 4 draws each: parallel
        drawn, expected = [], []
        for _ in range(24):  # the same logits each time: penalties and RNG state move the draws
            drawn.append(sampler.sample(engine._ctx, [(chain, index) for chain in chains]))
            expected.append([lib.llama_sampler_sample(twin, engine._ctx, index) for twin in twins])
        assert sampler._pool is not None  # the draws did go to the workers
        assert drawn == expected
        assert len({token for step in drawn for token in step}) > 1  # not one token over and over
        sampler.close()
        for twin in twins:
            lib.llama_sampler_free(twin)
    finally:
        engine.close()
