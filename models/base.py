"""The engine protocol: tokenize with special parsing off, stream a completion from token ids.

Every engine is fed token ids it tokenized itself, never a string that a library or server would
tokenize again with its own rules (that is how chat-template contamination gets in).
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields

FINISH_REASONS = ("stop", "length", "eos")


class EngineError(RuntimeError):
    """The engine could not run (bad model file, server down); the item is marked failed."""


class EngineSetupError(EngineError):
    """The engine cannot be set up as asked (a malformed server URL, a tokenizer of another model than the one
    served): the user fixes the command, so the command line reports it as bad input."""


class ContextRefused(EngineError):
    """A server refused the prompt as longer than its context (one it had not said, or has changed since): the
    item is refused for length, never failed, so `--retry-refused` with a larger context reaches it."""


class LoadStopped(EngineError):
    """The model load was asked to stop before it finished (the app's Stop while a model loads)."""


class PromptRefused(ValueError):
    """This prompt must not be fed (too long, control tokens); the item is marked refused with the reason."""


@dataclass(frozen=True)
class GenerationParams:
    """Sampling parameters; every field is recorded on the run. Unknown keys are rejected."""

    max_tokens: int = 256
    temperature: float = 0.7
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ValueError("max_tokens must be at least 1")
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        if any(not s for s in self.stop):
            raise ValueError("stop sequences must not be empty")

    @classmethod
    def from_dict(cls, values: dict) -> GenerationParams:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown sampling parameter(s): {', '.join(unknown)}")
        values = dict(values)
        if "stop" in values:
            values["stop"] = tuple(values["stop"])
        return cls(**values)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["stop"] = list(self.stop)
        return data


@dataclass(frozen=True)
class TextPiece:
    """A piece of completion text, streamed as soon as it is known not to be part of a stop string."""

    text: str


@dataclass(frozen=True)
class GenerationResult:
    text: str
    completion_tokens: int
    finish_reason: str  # stop | length | eos
    timings: dict = field(default_factory=dict)  # prompt_ms, generate_ms, prompt_tokens_evaluated
    token_ids: tuple[int, ...] = ()  # the sampled ids that `text` came from (an end-of-generation token excluded)
    # a sampled control token (not end-of-generation) that ended the completion, e.g. "<start_of_turn>": the model
    # left the data format; it is in neither `text`, `completion_tokens` nor `token_ids`
    control_token: str | None = None


@dataclass(frozen=True)
class ModelInfo:
    """What we know of the model; `fingerprint` identifies the exact weights."""

    engine: str
    path: str
    name: str
    fingerprint: str
    size_bytes: int
    architecture: str
    context_length: int
    n_ctx: int
    bos_id: int | None
    eos_id: int | None
    add_bos: bool
    add_bos_source: str  # "gguf" or "override"
    has_chat_template: bool
    metadata: dict = field(default_factory=dict)


def token_ids_sha256(ids: Sequence[int]) -> str:
    """DESIGN.md's fingerprint of fed ids: SHA-256 of the decimals joined by ','."""
    return hashlib.sha256(",".join(str(i) for i in ids).encode("ascii")).hexdigest()


class Engine(ABC):
    """One model behind the small surface the pipeline needs."""

    name: str = "engine"

    @abstractmethod
    def info(self) -> ModelInfo: ...

    @abstractmethod
    def tokenize(self, text: str) -> list[int]:
        """Token ids for plain text: special-token parsing off, BOS by the model's rule."""

    @abstractmethod
    def detokenize(self, ids: Sequence[int]) -> str: ...

    @abstractmethod
    def check_prompt(self, ids: Sequence[int], max_tokens: int) -> None:
        """Raise PromptRefused if these ids must not be fed (control tokens, context overflow)."""

    @abstractmethod
    def stream(self, ids: Sequence[int], params: GenerationParams) -> Iterator[TextPiece | GenerationResult]:
        """Yield text pieces, then exactly one GenerationResult."""

    def generate(self, ids: Sequence[int], params: GenerationParams) -> GenerationResult:
        for event in self.stream(ids, params):
            if isinstance(event, GenerationResult):
                return event
        raise EngineError("engine stream ended without a result")

    def close(self) -> None:  # noqa: B027 - a no-op by default, not abstract: an engine without resources skips it
        """Free the model; engines hold gigabytes."""
