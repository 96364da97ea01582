"""The in-process llama.cpp engine: token ids in, text out; never a string prompt, never a chat template."""

from __future__ import annotations

import ctypes
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from pathlib import Path

from gristmill.models.base import (
    Engine,
    EngineError,
    GenerationParams,
    GenerationResult,
    LoadStopped,
    ModelInfo,
    PromptRefused,
    TextPiece,
)
from gristmill.models.fingerprint import fingerprint, total_size
from gristmill.models.gguf import describe_metadata
from gristmill.models.stops import StopMatcher, Utf8Stream

DEFAULT_N_CTX_CAP = 4096
CONTROL_ATTR = 1 << 3  # LLAMA_TOKEN_ATTR_CONTROL


class LlamaCppEngine(Engine):
    name = "llama_cpp"

    def __init__(
        self,
        model_path: str | Path,
        *,
        n_ctx: int | None = None,
        n_ctx_cap: int = DEFAULT_N_CTX_CAP,
        n_threads: int | None = None,
        n_gpu_layers: int = 0,
        add_bos: bool | None = None,
        vocab_only: bool = False,
        n_batch: int = 512,
        flash_attn: bool = True,
        stop_loading: Callable[[], bool] | None = None,
    ):
        """`stop_loading`, asked as the model loads, ends the load early when true (raising LoadStopped); a
        Ctrl-C held during the load ends it too."""
        from gristmill.models import native_log

        native_log.install()
        import llama_cpp

        self._lib = llama_cpp
        path = Path(model_path)
        if not path.exists():
            raise EngineError(f"model file not found: {path}")
        self.path = path
        asked_to_stop = stop_loading or (lambda: False)
        try:
            with (
                native_log.interrupt_after_native_call() as interrupted,
                # a vocabulary loads at once: no hook, and no wait on another thread's load of a 20 GB model
                nullcontext()
                if vocab_only
                else native_log.model_load_stops_when(lambda: interrupted() or asked_to_stop()),
            ):
                self._llm = llama_cpp.Llama(
                    str(path),
                    n_ctx=n_ctx or n_ctx_cap,
                    n_threads=n_threads or os.cpu_count() or 2,
                    n_gpu_layers=n_gpu_layers,
                    vocab_only=vocab_only,
                    verbose=False,
                    n_batch=n_batch,
                    flash_attn=flash_attn,  # llama.cpp's own default ("auto": on where supported); the binding's is off
                )
        except (ValueError, RuntimeError) as error:
            if asked_to_stop():
                raise LoadStopped(f"stopped loading {path}") from None
            raise EngineError(f"cannot load {path}: {error}") from error
        self._vocab = self._llm._model.vocab
        self.metadata = dict(self._llm.metadata)
        arch = self.metadata.get("general.architecture", "unknown")
        self.context_length = int(self.metadata.get(f"{arch}.context_length", "0") or 0)
        # n_ctx defaults to the model's training context, capped by a setting
        self.n_ctx = n_ctx or min(n_ctx_cap, self.context_length or n_ctx_cap)
        gguf_add_bos = bool(llama_cpp.llama_vocab_get_add_bos(self._vocab))
        self.add_bos = gguf_add_bos if add_bos is None else add_bos
        self._add_bos_source = "gguf" if add_bos is None else "override"
        self.bos_id = llama_cpp.llama_vocab_bos(self._vocab)
        self.eos_id = llama_cpp.llama_vocab_eos(self._vocab)
        self._info: ModelInfo | None = None
        self.n_threads = n_threads or os.cpu_count() or 2
        self.n_batch = n_batch
        self.n_gpu_layers = n_gpu_layers
        self.flash_attn = flash_attn
        self.logits_processor = None  # tests force a token through this (llama-cpp-python's LogitsProcessorList)

    # --- what the model is -------------------------------------------------------------------
    def info(self) -> ModelInfo:
        if self._info is None:
            description = describe_metadata(self.metadata)
            self._info = ModelInfo(
                engine=self.name,
                path=str(self.path),
                name=description.name,
                fingerprint=fingerprint(self.path),
                size_bytes=total_size(self.path),
                architecture=description.architecture,
                context_length=self.context_length,
                n_ctx=self.n_ctx,
                bos_id=self.bos_id if self.bos_id >= 0 else None,
                eos_id=self.eos_id if self.eos_id >= 0 else None,
                add_bos=self.add_bos,
                add_bos_source=self._add_bos_source,
                has_chat_template=description.has_chat_template,
                metadata={k: v for k, v in self.metadata.items() if not k.startswith("tokenizer.chat_template")},
            )
        return self._info

    @property
    def n_vocab(self) -> int:
        """How many token ids the vocabulary has: ids are 0 to n_vocab - 1."""
        return int(self._lib.llama_vocab_n_tokens(self._vocab))

    def is_control(self, token_id: int) -> bool:
        return bool(self._lib.llama_vocab_get_attr(self._vocab, token_id) & CONTROL_ATTR)

    def token_text(self, token_id: int, special: bool = True) -> str:
        return self._piece(token_id, special).decode("utf-8", errors="replace")

    # --- text <-> ids ------------------------------------------------------------------------
    def tokenize(self, text: str) -> list[int]:
        ids = self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=False) if text else []
        if self.add_bos and self.bos_id >= 0:
            ids = [self.bos_id, *ids]
        return ids

    def detokenize(self, ids: Sequence[int]) -> str:
        stream = Utf8Stream()
        text = "".join(stream.feed(self._piece(i)) for i in ids)
        return text + stream.flush()

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes one token stands for (a piece of a multi-byte character is a byte string, not text)."""
        return self._piece(token_id)

    def _piece(self, token_id: int, special: bool = False) -> bytes:
        """The exact bytes of one token (llama-cpp-python's helper truncates pieces over 32 bytes)."""
        size = 64
        while True:
            buffer = ctypes.create_string_buffer(size)
            n = self._lib.llama_token_to_piece(self._vocab, token_id, buffer, size, 0, special)
            if n >= 0:
                return buffer.raw[:n]
            size = -n

    def check_prompt(self, ids: Sequence[int], max_tokens: int) -> None:
        for position, token_id in enumerate(ids):
            if position == 0 and self.add_bos and token_id == self.bos_id:
                continue
            if self.is_control(token_id):
                raise PromptRefused(
                    f"prompt contains control token {token_id} ({self.token_text(token_id)!r}) at position "
                    f"{position}; control tokens are never fed"
                )
        if len(ids) + max_tokens > self.n_ctx:
            raise PromptRefused(
                f"prompt has {len(ids)} tokens; with max_tokens {max_tokens} that is {len(ids) + max_tokens}, "
                f"more than the context of {self.n_ctx} tokens (never truncated: shorten the prompt, lower "
                f"--max-tokens or raise --n-ctx)"
            )

    # --- generation --------------------------------------------------------------------------
    def is_end(self, token_id: int) -> bool:
        return bool(self._lib.llama_vocab_is_eog(self._vocab, token_id))

    def stream(self, ids: Sequence[int], params: GenerationParams) -> Iterator[TextPiece | GenerationResult]:
        self.check_prompt(ids, params.max_tokens)
        self._llm.set_seed(params.seed)
        completion = Completion(self, params)
        started = time.perf_counter()
        first_token_at = None
        tokens = self._llm.generate(
            list(ids),
            top_k=params.top_k,
            top_p=params.top_p,
            min_p=params.min_p,
            temp=params.temperature,
            repeat_penalty=params.repeat_penalty,
            reset=True,
            logits_processor=self.logits_processor,
        )
        try:
            for token in tokens:
                if first_token_at is None:
                    first_token_at = time.perf_counter()
                emit = completion.feed(token)
                if emit:
                    yield TextPiece(emit)
                if completion.finish:
                    break
        finally:
            tokens.close()
        tail = completion.close()
        if tail:
            yield TextPiece(tail)
        ended = time.perf_counter()
        first = first_token_at or ended
        yield completion.result(
            {"prompt_ms": round((first - started) * 1000, 2), "generate_ms": round((ended - first) * 1000, 2)}
        )

    def close(self) -> None:
        llm = getattr(self, "_llm", None)
        if llm is not None:
            llm.close()
            del self._llm  # closed: a second close() finds nothing to close


class Completion:
    """One sequence's completion as its tokens arrive: bytes joined into UTF-8, stop strings matched, and the end.

    It ends at an end-of-generation token (`eos`), a stop string (`stop`), `max_tokens` (`length`), or a sampled
    control token that is not end-of-generation (`stop`, with `control_token` naming it): pieces render with special
    tokens hidden, so such a token would otherwise vanish from the text, and it means the model left the data format.
    Shared by the single-sequence engine and the batched one, so both end a completion the same way.
    """

    def __init__(self, engine: LlamaCppEngine, params: GenerationParams):
        self.engine = engine
        self.max_tokens = params.max_tokens
        self.decoder, self.matcher = Utf8Stream(), StopMatcher(params.stop)
        self.sampled: list[int] = []
        self.finish: str | None = None
        self.control_token: str | None = None

    def feed(self, token: int) -> str:
        """Take one sampled token; returns the text now safe to emit. `finish` is set once the completion ends."""
        if self.engine.is_end(token):
            self.finish = "eos"
            return ""
        if self.engine.is_control(token):
            self.finish, self.control_token = "stop", self.engine.token_text(token)
            return ""
        self.sampled.append(token)
        emit = self.matcher.feed(self.decoder.feed(self.engine._piece(token)))
        if self.matcher.stopped:
            self.finish = "stop"
        elif len(self.sampled) >= self.max_tokens:
            self.finish = "length"
        return emit

    def close(self) -> str:
        """The held-back tail once no more tokens come (a stop string may still complete in it)."""
        if self.finish is None:
            self.finish = "length"
        if self.matcher.stopped:
            return ""
        tail = self.matcher.feed(self.decoder.flush())
        if self.matcher.stopped:
            self.finish = "stop"
        else:
            tail += self.matcher.flush()
        return tail

    def result(self, timings: dict) -> GenerationResult:
        return GenerationResult(
            text=self.matcher.text,
            completion_tokens=len(self.sampled),
            finish_reason=self.finish or "length",
            token_ids=tuple(self.sampled),
            timings={**timings, "flash_attn": self.engine.flash_attn},  # changes outputs by float rounding
            control_token=self.control_token,
        )


def chat_control_tokens(engine: LlamaCppEngine, candidates: tuple[str, ...]) -> list[str]:
    """Which of the usual chat-turn markers are single control tokens in this vocabulary."""
    found = []
    for text in candidates:
        ids = engine._llm.tokenize(text.encode(), add_bos=False, special=True)
        if len(ids) == 1 and engine.is_control(ids[0]):
            found.append(text)
    return found
