"""Inference engines behind one small protocol. Knows nothing of SQLite or the UI."""

from gristmill.models.base import (
    ContextRefused,
    Engine,
    EngineError,
    EngineSetupError,
    GenerationParams,
    GenerationResult,
    LoadStopped,
    ModelInfo,
    PromptRefused,
    TextPiece,
)
from gristmill.models.registry import create_engine, engine_names, register_engine

__all__ = [
    "ContextRefused",
    "Engine",
    "EngineError",
    "EngineSetupError",
    "GenerationParams",
    "GenerationResult",
    "LoadStopped",
    "ModelInfo",
    "PromptRefused",
    "TextPiece",
    "create_engine",
    "engine_names",
    "register_engine",
]
