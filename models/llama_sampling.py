"""Drawing the next token of many sequences at once, each sequence's sampler chain on a worker thread.

After one `llama_decode` every sequence in flight draws a token, and `llama_sampler_sample` does that on one core:
it fills a candidate array over the whole vocabulary and runs the chain over it (about 0.8 ms for Gemma's 262k
tokens). Measured on a 2-core machine at 16 sequences, that was 16% of the wall time with the other core idle; on a
GPU host, with a short decode step and many idle cores, the share is larger.

`llama_sampler_sample` reads shared state of the context that the API does not promise is safe across threads,
so the context is only touched on the caller's thread (the logits pointer of each sequence); each worker fills
its own candidate array and runs `llama_sampler_apply` and `llama_sampler_accept` on its sequence's own chain.
That is what `llama_sampler_sample` does on the CPU, so a token drawn here is the token it would draw; ctypes
releases the GIL around each C call, and numpy around the array copies, so the workers run in parallel.
(`llama_sampler_sample` also takes a token that a backend sampler attached to the context already drew; no
backend sampler is attached here, so the logits are always the full vocabulary's.)
"""

from __future__ import annotations

import ctypes
import threading
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any

import numpy as np

from gristmill.models.base import EngineError


# Below this many draws per worker, the hand-offs and, on a CPU build, llama.cpp's OpenMP threads (which spin on
# the cores for a while after a decode) cost more than the parallel draws save: measured with 2 threads on the
# embedded model (bench/bench_sampling.py), 4 draws on 2 workers took 2% longer than on one thread, 8 took 1% less.
# Tuned on a CPU build; with the decode on a GPU nothing spins, and a lower figure may pay there (unmeasured).
MIN_DRAWS_PER_WORKER = 4


class ParallelSampler:
    """Draws one token per (sampler chain, logits index) after a decode, on up to `workers` threads."""

    def __init__(self, lib: Any, n_vocab: int, workers: int):
        self._lib, self._n_vocab, self.workers = lib, n_vocab, max(1, workers)
        self._ids = np.arange(n_vocab, dtype=np.int32)
        self._local = threading.local()  # one candidate array per worker thread, not per sequence
        self._pool: ThreadPoolExecutor | None = None

    def sample(self, ctx: Any, requests: list[tuple[Any, int]]) -> list[int]:
        """The token each chain draws from the logits at its batch index, in the order of `requests`."""
        workers = min(self.workers, len(requests) // MIN_DRAWS_PER_WORKER)
        if workers < 2:
            return [self._lib.llama_sampler_sample(chain, ctx, index) for chain, index in requests]
        logits = []
        for _, index in requests:
            pointer = self._lib.llama_get_logits_ith(ctx, index)
            if not pointer:
                raise EngineError(f"llama.cpp has no logits for batch index {index}")
            logits.append(pointer)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.workers - 1, thread_name_prefix="gristmill-sampling")
        chains = [chain for chain, _ in requests]
        step = -(-len(requests) // workers)  # one chunk per worker: fewer hand-offs than one per draw
        chunks = [(chains[i : i + step], logits[i : i + step]) for i in range(0, len(requests), step)]
        futures = [self._pool.submit(self._draw_all, chunk) for chunk in chunks[1:]]
        try:
            first = self._draw_all(chunks[0])  # the calling thread is one of the workers
            wait(futures)
        except BaseException:  # Ctrl-C, or an error: the caller may free these chains next
            _wait_through_interrupts(futures)
            raise
        return first + [token for future in futures for token in future.result()]

    def close(self) -> None:
        """Stop the workers, waiting for any draw in progress: after this no thread holds a chain."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def _draw_all(self, chunk: tuple[list[Any], list[Any]]) -> list[int]:
        return [self._draw(chain, logits) for chain, logits in zip(*chunk, strict=True)]

    def _draw(self, chain: Any, logits: Any) -> int:
        lib, n_vocab = self._lib, self._n_vocab
        candidates, view = self._candidates()
        view["id"] = self._ids  # the chain sorts and truncates in place: every field is set again each time
        view["logit"] = np.ctypeslib.as_array(logits, shape=(n_vocab,))
        view["p"] = 0.0
        array = lib.llama_token_data_array(candidates, n_vocab, -1, False)
        lib.llama_sampler_apply(chain, ctypes.byref(array))
        if not 0 <= array.selected < array.size:
            raise EngineError(f"the sampler chain selected no token ({array.selected} of {array.size})")
        token = int(array.data[array.selected].id)
        lib.llama_sampler_accept(chain, token)
        return token

    def _candidates(self) -> tuple[Any, np.ndarray]:
        local = self._local
        if not hasattr(local, "candidates"):
            local.candidates = (self._lib.llama_token_data * self._n_vocab)()
            local.view = np.ctypeslib.as_array(local.candidates)
        return local.candidates, local.view


def _wait_through_interrupts(futures: list[Future]) -> None:
    """Wait until every worker is done with its chains (milliseconds), even through another Ctrl-C."""
    while True:
        try:
            wait(futures)
            return
        except KeyboardInterrupt:
            continue
