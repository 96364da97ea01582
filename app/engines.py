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
    return create_engine(
        "llama_cpp", model_path=resolve_model(config.model), n_ctx=config.n_ctx, n_ctx_cap=config.n_ctx_cap,
        n_threads=config.threads, n_gpu_layers=config.gpu_layers, add_bos=config.add_bos, vocab_only=vocab_only,
    )


def open_remote_engine(config: GenerateConfig) -> Engine:
    """`--server URL...`: the key is read from the environment here and travels only in an HTTP header."""
    from gristmill.models.remote_http import RetryPolicy, Secret

    tokenizer = config.tokenizer or config.model
    if not tokenizer:
        raise EngineError("--server needs --tokenizer PATH: the served model's GGUF (read vocab-only) or its "
                          "tokenizer.json; gristmill tokenizes every prompt itself and sends ids")
    key = os.environ.get(config.api_key_env)
    policy = RetryPolicy(attempts=max(1, config.retries), timeout_s=config.request_timeout)
    return create_engine(
        "remote", servers=config.server, tokenizer=Path(tokenizer).expanduser(), concurrency=config.concurrency,
        api_key=Secret(key) if key else None, server_kind=config.server_kind, add_bos=config.add_bos, policy=policy,
    )
