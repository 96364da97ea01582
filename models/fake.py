"""A deterministic engine for fast UI-logic tests: words are tokens, replies come from a script."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence

from gristmill.models.base import Engine, GenerationParams, GenerationResult, ModelInfo, PromptRefused, TextPiece
from gristmill.models.stops import StopMatcher


class FakeEngine(Engine):
    """Tokenizes by characters (id = code point); answers with `replies` in turn, or an echo of the prompt's hash."""

    name = "fake"

    def __init__(self, replies: Sequence[str] = (), n_ctx: int = 4096, fail_on: str | None = None, **_ignored):
        self.replies = list(replies)
        self.n_ctx = n_ctx
        self.fail_on = fail_on
        self.calls = 0

    def info(self) -> ModelInfo:
        return ModelInfo(
            engine=self.name,
            path="fake",
            name="fake",
            fingerprint="sha256:fake",
            size_bytes=0,
            architecture="fake",
            context_length=self.n_ctx,
            n_ctx=self.n_ctx,
            bos_id=None,
            eos_id=None,
            add_bos=False,
            add_bos_source="gguf",
            has_chat_template=False,
        )

    def tokenize(self, text: str) -> list[int]:
        return [ord(c) for c in text]

    def detokenize(self, ids: Sequence[int]) -> str:
        return "".join(chr(i) for i in ids)

    def token_bytes(self, token_id: int) -> bytes:
        return chr(token_id).encode("utf-8")

    def check_prompt(self, ids: Sequence[int], max_tokens: int) -> None:
        if len(ids) + max_tokens > self.n_ctx:
            raise PromptRefused(
                f"prompt has {len(ids)} tokens; with max_tokens {max_tokens} that exceeds "
                f"the context of {self.n_ctx} tokens"
            )

    def stream(self, ids: Sequence[int], params: GenerationParams) -> Iterator[TextPiece | GenerationResult]:
        self.check_prompt(ids, params.max_tokens)
        prompt = self.detokenize(ids)
        if self.fail_on and self.fail_on in prompt:
            raise RuntimeError(f"fake failure on {self.fail_on!r}")
        if self.replies:
            reply = self.replies[self.calls % len(self.replies)]
        else:
            digest = hashlib.sha256(f"{params.seed}:{prompt}".encode()).hexdigest()[:12]
            reply = f" answer {digest}"
        self.calls += 1
        matcher = StopMatcher(params.stop)
        count = 0
        for char in reply[: params.max_tokens]:
            count += 1
            emit = matcher.feed(char)
            if emit:
                yield TextPiece(emit)
            if matcher.stopped:
                break
        if not matcher.stopped and (tail := matcher.flush()):
            yield TextPiece(tail)
        finish = "stop" if matcher.stopped else ("length" if len(reply) > params.max_tokens else "eos")
        yield GenerationResult(
            matcher.text,
            count,
            finish,
            {"prompt_ms": 0.0, "generate_ms": 0.0},
            token_ids=tuple(ord(c) for c in reply[:count]),
        )
