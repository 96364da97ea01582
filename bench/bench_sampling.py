"""Parallel draws in the batched engine: wall time with the sequences' tokens drawn on one thread ÷ on the
engine's worker threads (`models/llama_sampling.py`), the same work in the same run, rounds interleaved.

The batched engine alone (no database, no pipeline), embedded model: 3 x N distinct prompts at N sequences in
flight, 64 max tokens, sampled (temperature 0.8). The time inside `llama_decode` is reported too, so a gain
outside it is seen to come from the draws, and each round checks that both make the same texts (same seeds, same
draws). No goal: it shows what the parallel draws are worth on this machine.

Usage: python bench/bench_sampling.py [--threads T] [--rounds R]
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from common import int_option, usage  # noqa: E402

from gristmill.models import GenerationParams, create_engine  # noqa: E402
from gristmill.models.base import EngineError, GenerationResult  # noqa: E402
from gristmill.models.batch import PromptJob, SampleRequest  # noqa: E402
from gristmill.models.default_model import default_model_path  # noqa: E402
from gristmill.models.llama_batch import LlamaBatchEngine  # noqa: E402

THREADS = int_option("--threads", 2)
ROUNDS = int_option("--rounds", 3)
SUBJECTS = ["cat", "dog", "robot", "king", "tree", "river", "pilot", "chef", "child", "ghost", "bird", "fox",
            "queen", "baker", "sailor", "farmer"]
PARAMS = GenerationParams(max_tokens=64, temperature=0.8, seed=1)


class _TimedDecode:
    """The llama_cpp module with `llama_decode` timed: what the engine spends outside it is the rest."""

    def __init__(self, lib):
        self._lib, self.seconds = lib, 0.0

    def __getattr__(self, name):
        return getattr(self._lib, name)

    def llama_decode(self, ctx, batch):
        start = time.perf_counter()
        try:
            return self._lib.llama_decode(ctx, batch)
        finally:
            self.seconds += time.perf_counter() - start


def run(engine, n: int, workers: int) -> tuple[float, float, dict[int, str]]:
    """Wall seconds, seconds in llama_decode and the texts of 3 x n prompts at n sequences, drawing on `workers`
    threads."""
    batch = LlamaBatchEngine(engine, n)
    batch._sampling.workers = workers
    timed = batch._lib = _TimedDecode(batch._lib)
    queue, texts = list(range(3 * n)), {}
    start = time.perf_counter()
    while queue or batch.in_flight():
        while queue and batch.in_flight() < n:
            k = queue.pop()
            ids = tuple(engine.tokenize(f"Write a short story about a {SUBJECTS[k % len(SUBJECTS)]} who learns {k}"))
            batch.submit(PromptJob(ids, PARAMS, (SampleRequest(k, seed=k),)))
        for event in batch.poll():
            if isinstance(event.event, EngineError):
                raise SystemExit(f"sequence {event.key} failed: {event.event}")
            if isinstance(event.event, GenerationResult):
                texts[event.key] = event.event.text
    wall = time.perf_counter() - start
    batch.close()
    return wall, timed.seconds, texts


def main() -> None:
    engine = create_engine("llama_cpp", model_path=default_model_path(), n_ctx=1024, n_threads=THREADS)
    print(f"model {engine.path.name}, {THREADS} threads, {ROUNDS} interleaved rounds, medians")
    for n in (4, 8, 16):
        serial, parallel = [], []
        for _ in range(ROUNDS):
            *one, serial_texts = run(engine, n, 1)
            *many, parallel_texts = run(engine, n, THREADS)
            assert parallel_texts == serial_texts, "the parallel draws must be the serial draws"
            serial.append(one)
            parallel.append(many)
        (s_wall, s_decode), (p_wall, p_decode) = (tuple(map(statistics.median, zip(*r, strict=True)))
                                                  for r in (serial, parallel))
        print(f"N={n:2d}: draws on 1 thread {s_wall:.2f} s (outside llama_decode {s_wall - s_decode:.2f} s), "
              f"on {THREADS} {p_wall:.2f} s (outside {p_wall - p_decode:.2f} s): parallel / serial wall "
              f"{p_wall / s_wall:.3f}")
    engine.close()


if __name__ == "__main__":
    usage(__doc__)
    main()
