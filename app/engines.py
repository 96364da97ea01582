"""Choosing and opening the engine for a command: the embedded default model unless told otherwise."""

from __future__ import annotations

from pathlib import Path

from gristmill.app.config import GenerateConfig
from gristmill.models import Engine, EngineError, create_engine
from gristmill.models.batch import ConcurrentEngine, SerialSequences
from gristmill.models.default_model import default_model_path


def resolve_model(model: str | None) -> Path:
    return Path(model).expanduser() if model else default_model_path()


def open_engine(config: GenerateConfig, *, vocab_only: bool = False) -> Engine:
    return create_engine(
        "llama_cpp", model_path=resolve_model(config.model), n_ctx=config.n_ctx, n_ctx_cap=config.n_ctx_cap,
        n_threads=config.threads, n_gpu_layers=config.gpu_layers, add_bos=config.add_bos, vocab_only=vocab_only,
    )


def open_concurrent(engine: Engine, batch: int) -> ConcurrentEngine:
    """The engine behind the scheduler: `batch` sequences decoded together in-process, or one at a time."""
    if batch <= 1:
        return SerialSequences(engine)
    from gristmill.models.llama_batch import LlamaBatchEngine
    from gristmill.models.llama_cpp_engine import LlamaCppEngine

    if not isinstance(engine, LlamaCppEngine):
        raise EngineError(f"--batch {batch} needs the in-process llama.cpp engine, not {engine.name}")
    return LlamaBatchEngine(engine, batch)
