"""Tokenizers for remote generation: we tokenize, the server only ever sees ids.

A server that tokenizes a string prompt does it with its own rules (llama-server parses special tokens in
strings, so a literal `<start_of_turn>` in an instruction becomes the control token). So the prompt is
tokenized here, with special-token parsing off, by one of two tokenizers the user names with `--tokenizer`:

- a GGUF file, loaded vocab-only through llama.cpp (`LlamaCppEngine(vocab_only=True)`): the exact tokenizer
  the in-process engine uses, so a remote run feeds the same ids a local one would;
- a Hugging Face `tokenizer.json` through the `tokenizers` library, with `encode_special_tokens` on (special
  tokens written in the text are encoded as text) and no post-processor specials.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

from gristmill.models.base import EngineError, EngineSetupError, PromptRefused
from gristmill.models.stops import Utf8Stream


class RemoteTokenizer(ABC):
    """What the remote engine needs from a tokenizer; it never loads weights."""

    path: Path
    add_bos: bool
    add_bos_source: str  # "gguf", "tokenizer.json" or "override"
    bos_id: int | None
    eos_id: int | None
    context_length: int  # what the tokenizer's file says the model was trained on (0: unknown)
    n_vocab: int  # ids at or past it are not this vocabulary's: a server serving another model sent them
    # whether n_vocab is the model's own count, as llama-server reports it: a GGUF's is; a tokenizer.json's may
    # be smaller than the model's padded embedding (Qwen2.5: 151,665 against 151,936)
    exact_vocab: bool = False
    name: str
    architecture: str
    has_chat_template: bool
    metadata: dict

    @abstractmethod
    def tokenize(self, text: str) -> list[int]:
        """Plain text to ids: special-token parsing off, BOS by the model's rule."""

    @abstractmethod
    def piece(self, token_id: int) -> bytes:
        """The bytes one token renders as, control tokens as nothing (as the in-process engine renders them)."""

    @abstractmethod
    def is_control(self, token_id: int) -> bool: ...

    @abstractmethod
    def is_eog(self, token_id: int) -> bool:
        """End of generation (EOS, EOT...): the server stops there, and the id is not part of the completion."""

    def detokenize(self, ids: Sequence[int]) -> str:
        stream = Utf8Stream()
        return "".join(stream.feed(self.piece(i)) for i in ids) + stream.flush()

    def check_prompt(self, ids: Sequence[int], max_tokens: int, n_ctx: int | None) -> None:
        for position, token_id in enumerate(ids):
            if position == 0 and self.add_bos and token_id == self.bos_id:
                continue
            if self.is_control(token_id):
                raise PromptRefused(
                    f"prompt contains control token {token_id} at position {position}; control tokens are never fed"
                )
        if n_ctx and len(ids) + max_tokens > n_ctx:
            raise PromptRefused(
                f"prompt has {len(ids)} tokens; with max_tokens {max_tokens} that is {len(ids) + max_tokens}, "
                f"more than the server's context of {n_ctx} tokens per sequence (never truncated: shorten the "
                f"prompt, lower --max-tokens or give the server a larger context)"
            )

    @abstractmethod
    def fingerprint(self) -> str: ...

    def close(self) -> None:  # noqa: B027 - most tokenizers hold nothing to free
        """Free the vocabulary."""


class GgufTokenizer(RemoteTokenizer):
    """The GGUF's own vocabulary through llama.cpp: the same ids, BOS rule and control tokens as in-process."""

    exact_vocab = True

    def __init__(self, path: Path, add_bos: bool | None = None):
        from gristmill.models.llama_cpp_engine import LlamaCppEngine

        self.path = path
        self._engine = LlamaCppEngine(path, vocab_only=True, add_bos=add_bos, n_ctx=512)
        info = self._engine.info()
        self.add_bos, self.add_bos_source = info.add_bos, info.add_bos_source
        self.bos_id, self.eos_id = info.bos_id, info.eos_id
        self.context_length = info.context_length
        self.n_vocab = self._engine.n_vocab
        self.name, self.architecture = info.name, info.architecture
        self.has_chat_template = info.has_chat_template
        self.metadata = info.metadata
        self._fingerprint = info.fingerprint

    def tokenize(self, text: str) -> list[int]:
        return self._engine.tokenize(text)

    def piece(self, token_id: int) -> bytes:
        return self._engine._piece(token_id)

    def is_control(self, token_id: int) -> bool:
        return self._engine.is_control(token_id)

    def is_eog(self, token_id: int) -> bool:
        return bool(self._engine._lib.llama_vocab_is_eog(self._engine._vocab, token_id))

    def fingerprint(self) -> str:
        return self._fingerprint

    def close(self) -> None:
        self._engine.close()


class HfTokenizer(RemoteTokenizer):
    """A Hugging Face `tokenizer.json`; special tokens typed in text stay text (`encode_special_tokens`)."""

    def __init__(self, path: Path, add_bos: bool | None = None):
        try:
            from tokenizers import Tokenizer
        except ImportError as error:  # pragma: no cover - a declared dependency
            raise EngineError("the tokenizers library is needed for a tokenizer.json") from error
        self.path = path
        try:
            self._tok = Tokenizer.from_file(str(path))
        except Exception as error:  # the library raises bare Exceptions for bad files
            raise EngineError(f"cannot load tokenizer {path}: {error}") from error
        self._tok.encode_special_tokens = True  # a literal "<|im_start|>" in an instruction stays plain text
        self._special = {t.content: i for i, t in self._tok.get_added_tokens_decoder().items() if t.special}
        self._special_ids = set(self._special.values())
        config = _tokenizer_config(path)
        # BOS: what the tokenizer's post-processor adds in front of a sequence, unless overridden
        with_specials = self._tok.encode("x", add_special_tokens=True).ids
        plain = self._tok.encode("x", add_special_tokens=False).ids
        first = with_specials[0] if with_specials and with_specials[: len(plain)] != plain else None
        self.bos_id = first if first in self._special_ids else self._special.get(config.get("bos_token") or "")
        rule = first is not None and first == self.bos_id
        self.add_bos = rule if add_bos is None else add_bos
        self.add_bos_source = "tokenizer.json" if add_bos is None else "override"
        eos_text = config.get("eos_token")
        self.eos_id = self._special.get(eos_text) if isinstance(eos_text, str) else None
        self.context_length = (
            int(config.get("model_max_length") or 0) if str(config.get("model_max_length", "")).isdigit() else 0
        )
        self.name = path.parent.name or path.name
        self.architecture = "unknown"
        self.has_chat_template = bool(config.get("chat_template"))
        self.n_vocab = self._tok.get_vocab_size(with_added_tokens=True)
        self.metadata = {"tokenizer.json": str(path), "vocab_size": self.n_vocab}

    def tokenize(self, text: str) -> list[int]:
        ids = self._tok.encode(text, add_special_tokens=False).ids if text else []
        if self.add_bos and self.bos_id is not None:
            ids = [self.bos_id, *ids]
        return ids

    def piece(self, token_id: int) -> bytes:
        if token_id in self._special_ids:
            return b""
        return self._tok.decode([token_id], skip_special_tokens=False).encode("utf-8", errors="surrogatepass")

    def detokenize(self, ids: Sequence[int]) -> str:
        # byte-level BPE pieces are not whole characters: decode the run, specials rendered as nothing
        return self._tok.decode([i for i in ids if i not in self._special_ids], skip_special_tokens=False)

    def is_control(self, token_id: int) -> bool:
        return token_id in self._special_ids

    def is_eog(self, token_id: int) -> bool:
        return token_id == self.eos_id if self.eos_id is not None else token_id in self._special_ids

    def fingerprint(self) -> str:
        return "sha256:" + hashlib.sha256(self.path.read_bytes()).hexdigest()


def _tokenizer_config(path: Path) -> dict:
    """`tokenizer_config.json` beside a tokenizer.json names BOS/EOS and the context; absent is fine."""
    config_path = path.with_name("tokenizer_config.json")
    try:
        data = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    for key in ("bos_token", "eos_token"):
        if isinstance(data.get(key), dict):
            data[key] = data[key].get("content")
    return data


def open_tokenizer(path: str | Path, add_bos: bool | None = None) -> RemoteTokenizer:
    """A `.gguf` through llama.cpp, anything else as a Hugging Face tokenizer.json."""
    path = Path(path).expanduser()
    if not path.exists():
        raise EngineSetupError(f"tokenizer file not found: {path}")
    try:
        if path.suffix.lower() == ".gguf":
            return GgufTokenizer(path, add_bos)
        return HfTokenizer(path, add_bos)
    except EngineSetupError:
        raise
    except EngineError as error:  # the file is wrong, not the server: the user fixes --tokenizer (exit 2)
        kind = "a truncated or corrupt GGUF?" if path.suffix.lower() == ".gguf" else "not a tokenizer.json?"
        raise EngineSetupError(f"--tokenizer {path}: {error} ({kind})") from error
