"""The concurrent engine surface: many sequences in flight, advanced together, results as they finish.

One scheduler (in `app/`) drives every engine through this surface: in-process llama.cpp batching
(one `llama_decode` advances every live sequence), remote servers (concurrent HTTP requests), and
any plain `Engine` through `SerialSequences`, which runs one sequence at a time.

The unit of work is a `PromptJob`: one prompt's token ids and the samples to draw from it. An engine
may evaluate the prompt once and share it between the samples (llama.cpp: `llama_memory_seq_cp`;
a server: one request with `n`). Every sample carries its own key (the caller's generation id) and
its own seed, so a sample's output never depends on which other samples share its batch beyond the
float rounding that batching itself brings.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

from gristmill.models.base import Engine, EngineError, GenerationParams, GenerationResult, TextPiece


@dataclass(frozen=True)
class SampleRequest:
    """One sequence to draw: `key` comes back on every event for it; `seed` is this sample's own."""

    key: int
    seed: int


@dataclass(frozen=True)
class PromptJob:
    """One prompt (token ids, already checked by the caller) and its samples. `params.seed` is ignored."""

    ids: tuple[int, ...]
    params: GenerationParams
    samples: tuple[SampleRequest, ...]


@dataclass(frozen=True)
class SequenceEvent:
    """Something happened to sequence `key`: a text piece, its final result, or the error that ended it.

    A `GenerationResult` or an `EngineError` is the last event for its key.
    """

    key: int
    event: TextPiece | GenerationResult | EngineError

    @property
    def final(self) -> bool:
        return not isinstance(self.event, TextPiece)


class ConcurrentEngine(ABC):
    """Sequences in flight, advanced by `poll`. Not thread-safe: one scheduler thread drives it."""

    @property
    @abstractmethod
    def capacity(self) -> int:
        """The most sequences in flight at once (`--batch N`, or concurrency × endpoints)."""

    @abstractmethod
    def in_flight(self) -> int:
        """Sequences submitted and not yet ended."""

    def free_slots(self) -> int:
        return self.capacity - self.in_flight()

    def check_prompt(self, ids: tuple[int, ...], max_tokens: int) -> None:  # noqa: B027 - optional hook
        """Raise PromptRefused if this engine cannot run the prompt (e.g. a per-sequence context smaller than the
        model's). The plain engine's own `check_prompt` runs first; this adds only what batching changes."""

    @abstractmethod
    def submit(self, job: PromptJob) -> None:
        """Start every sample of `job`; the caller never submits more samples than `free_slots()`."""

    @abstractmethod
    def poll(self, timeout: float | None = None) -> list[SequenceEvent]:
        """Advance the sequences in flight (or wait up to `timeout` seconds for news) and return what happened."""

    @abstractmethod
    def cancel(self) -> list[int]:
        """Abandon every sequence in flight; returns their keys (they stay pending and resume later)."""

    def close(self) -> None:  # noqa: B027 - a no-op by default, not abstract: an engine without resources skips it
        """Free what the engine holds."""

    def describe(self) -> dict:
        """What a run records about how it was driven (batch size, endpoints); never part of its identity."""
        return {"capacity": self.capacity}


class SerialSequences(ConcurrentEngine):
    """Any `Engine` behind the concurrent surface: one sequence at a time, streaming its pieces."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self._queue: deque[tuple[PromptJob, SampleRequest]] = deque()
        # (key, iterator over the engine's stream)
        self._current: tuple[int, Iterator[TextPiece | GenerationResult]] | None = None

    @property
    def capacity(self) -> int:
        return 1

    def in_flight(self) -> int:
        return len(self._queue) + (self._current is not None)

    def submit(self, job: PromptJob) -> None:
        for sample in job.samples:
            self._queue.append((job, sample))

    def poll(self, timeout: float | None = None) -> list[SequenceEvent]:
        if self._current is None:
            if not self._queue:
                return []
            job, sample = self._queue.popleft()
            self._current = (sample.key, iter(self.engine.stream(job.ids, replace(job.params, seed=sample.seed))))
        key, stream = self._current
        try:
            event = next(stream)
        except StopIteration:
            self._current = None
            return [SequenceEvent(key, EngineError("engine stream ended without a result"))]
        except EngineError as error:
            self._current = None
            return [SequenceEvent(key, error)]
        except Exception as error:  # any failure of one sequence fails that item only; the run goes on
            self._current = None
            return [SequenceEvent(key, EngineError(f"{type(error).__name__}: {error}"))]
        if isinstance(event, GenerationResult):
            self._current = None
        return [SequenceEvent(key, event)]

    def cancel(self) -> list[int]:
        keys = [sample.key for _, sample in self._queue]
        if self._current is not None:
            keys.insert(0, self._current[0])
        self._queue.clear()
        self._current = None
        return keys

    def describe(self) -> dict:
        return {"capacity": 1, "mode": "serial"}


__all__ = ["ConcurrentEngine", "GenerationParams", "PromptJob", "SampleRequest", "SequenceEvent", "SerialSequences"]


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the common prefix of two token sequences of the same type (a list and a tuple never compare
    equal), by bisection on slice equality: compared in C, as prompts are long."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    low, high = 0, n  # a[:low] == b[:low] and a[:high] != b[:high]
    while high - low > 1:
        middle = (low + high) // 2
        if a[:middle] == b[:middle]:
            low = middle
        else:
            high = middle
    return low
