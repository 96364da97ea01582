"""Choosing and opening the engine for a command: the embedded default model unless told otherwise."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from gristmill.app.config import GenerateConfig
from gristmill.app.errors import BadInput
from gristmill.models import Engine, EngineError, EngineSetupError, LoadStopped, create_engine
from gristmill.models.batch import ConcurrentEngine, SerialSequences
from gristmill.models.default_model import default_model_path

GGUF_MAGIC = b"GGUF"


def resolve_model(model: str | None) -> Path:
    return Path(model).expanduser() if model else default_model_path()


def check_model_file(path: Path) -> None:
    """Say what is wrong with a model path in words before llama.cpp says it in its own (or in a log line)."""
    if not path.exists():
        if path.is_symlink():
            raise BadInput(f"model {path}: a symbolic link to nothing (its target is missing, or the links loop)")
        raise BadInput(f"model {path}: file not found")
    if path.is_dir():
        raise BadInput(f"model {path}: is a directory; give the .gguf file (the first part of a split model)")
    if not os.access(path, os.R_OK):
        raise BadInput(f"model {path}: cannot read it (permission denied)")
    with path.open("rb") as handle:
        magic = handle.read(4)
    if magic != GGUF_MAGIC:
        what = "an empty file" if not magic else f"starts with {magic!r}, not {GGUF_MAGIC!r}"
        raise BadInput(f"model {path}: not a GGUF file ({what})")


def open_engine(
    config: GenerateConfig, *, vocab_only: bool = False, stop_loading: Callable[[], bool] | None = None
) -> Engine:
    """The configured engine; a model file that is missing, not GGUF, truncated or corrupt is bad input. A model
    load ends early, raising LoadStopped, once `stop_loading()` is true."""
    if config.server and not vocab_only:
        return open_remote_engine(config)
    model = config.model
    if config.server and not model and (config.tokenizer or "").lower().endswith(".gguf"):
        model = config.tokenizer  # preview and doctor tokenize with the served model's vocabulary
    path = resolve_model(model)
    check_model_file(path)
    try:
        return create_engine(
            "llama_cpp",
            model_path=path,
            n_ctx=config.n_ctx,
            n_ctx_cap=config.n_ctx_cap,
            n_threads=config.threads,
            n_gpu_layers=config.gpu_layers,
            flash_attn=config.flash_attn,
            add_bos=config.add_bos,
            vocab_only=vocab_only,
            stop_loading=stop_loading,
        )
    except FileNotFoundError as error:  # a split model with a part missing
        raise BadInput(f"model {path}: {error}") from error
    except LoadStopped:
        raise
    except EngineError as error:
        raise BadInput(f"model {path}: cannot load it: {_cause(error)}") from error


def _cause(error: EngineError) -> str:
    """llama.cpp's reason, with what a user can do about it."""
    text = str(error)
    text = text.split(": ", 1)[1] if text.startswith("cannot load ") and ": " in text else text
    if "context" in text.lower():
        return f"{text} (too large a context for this machine's memory? try a smaller --n-ctx)"
    return f"{text} (a truncated or corrupt GGUF? its size, the download, the llama.cpp version)"


def open_concurrent(engine: Engine, batch: int) -> ConcurrentEngine:
    """The engine behind the scheduler: `batch` sequences decoded together in-process, or one at a time."""
    if isinstance(engine, ConcurrentEngine):  # a remote engine: concurrency x endpoints requests in flight
        return engine
    if batch <= 1:
        return SerialSequences(engine)
    from gristmill.models.llama_batch import LlamaBatchEngine
    from gristmill.models.llama_cpp_engine import LlamaCppEngine

    if not isinstance(engine, LlamaCppEngine):
        raise EngineError(f"--batch {batch} needs the in-process llama.cpp engine, not {engine.name}")
    return LlamaBatchEngine(engine, batch)


def open_remote_engine(config: GenerateConfig) -> Engine:
    """`--server URL...`: the key is read from the environment here and travels only in an HTTP header."""
    from gristmill.models.remote_http import RetryPolicy

    tokenizer = config.tokenizer or config.model
    if not tokenizer:
        raise BadInput(
            "--server needs --tokenizer PATH: the served model's GGUF (read vocab-only) or its "
            "tokenizer.json; gristmill tokenizes every prompt itself and sends ids"
        )
    if not Path(tokenizer).expanduser().is_file():
        raise BadInput(f"--tokenizer {tokenizer}: tokenizer file not found")
    policy = RetryPolicy(attempts=config.retries, timeout_s=config.request_timeout, outage_s=config.server_wait)
    try:
        return create_engine(
            "remote",
            servers=config.server,
            tokenizer=Path(tokenizer).expanduser(),
            concurrency=config.concurrency,
            api_key=_key_from_env(config.api_key_env),
            server_kind=config.server_kind,
            add_bos=config.add_bos,
            policy=policy,
        )
    except EngineSetupError as error:  # the command asks for something that cannot be: fix it (exit 2)
        raise BadInput(str(error)) from error


def _key_from_env(name: str):
    """Wrapped at once: no frame keeps the key as a plain string (a crash report shows frames' locals)."""
    from gristmill.models.remote_http import Secret

    return Secret(os.environ[name]) if os.environ.get(name) else None
