"""Choosing and opening the engine for a command: the embedded default model unless told otherwise."""

from __future__ import annotations

import os
from pathlib import Path

from gristmill.app.config import GenerateConfig
from gristmill.models import Engine, EngineError, create_engine
from gristmill.models.default_model import default_model_path


def resolve_model(model: str | None) -> Path:
    return Path(model).expanduser() if model else default_model_path()


def open_engine(config: GenerateConfig, *, vocab_only: bool = False) -> Engine:
    if config.server and not vocab_only:
        return open_remote_engine(config)
    model = config.model
    if config.server and not model and (config.tokenizer or "").lower().endswith(".gguf"):
        model = config.tokenizer  # preview and doctor tokenize with the served model's vocabulary
    return create_engine(
        "llama_cpp", model_path=resolve_model(model), n_ctx=config.n_ctx, n_ctx_cap=config.n_ctx_cap,
        n_threads=config.threads, n_gpu_layers=config.gpu_layers, add_bos=config.add_bos, vocab_only=vocab_only,
    )


def open_remote_engine(config: GenerateConfig) -> Engine:
    """`--server URL...`: the key is read from the environment here and travels only in an HTTP header."""
    from gristmill.models.remote_http import RetryPolicy

    tokenizer = config.tokenizer or config.model
    if not tokenizer:
        raise EngineError("--server needs --tokenizer PATH: the served model's GGUF (read vocab-only) or its "
                          "tokenizer.json; gristmill tokenizes every prompt itself and sends ids")
    policy = RetryPolicy(attempts=max(1, config.retries), timeout_s=config.request_timeout)
    return create_engine(
        "remote", servers=config.server, tokenizer=Path(tokenizer).expanduser(), concurrency=config.concurrency,
        api_key=_key_from_env(config.api_key_env), server_kind=config.server_kind, add_bos=config.add_bos,
        policy=policy,
    )


def _key_from_env(name: str):
    """Wrapped at once: no frame keeps the key as a plain string (a crash report shows frames' locals)."""
    from gristmill.models.remote_http import Secret

    return Secret(os.environ[name]) if os.environ.get(name) else None
