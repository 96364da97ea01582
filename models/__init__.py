"""Inference engines behind one small protocol. Knows nothing of SQLite or the UI."""

from gristmill.models.base import (
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
