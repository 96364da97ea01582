"""Engines register by name; an engine's heavy imports happen only when it is created."""

from __future__ import annotations

import importlib
from collections.abc import Callable

from gristmill.models.base import Engine

_FACTORIES: dict[str, str | Callable[..., Engine]] = {}


def register_engine(name: str, factory: str | Callable[..., Engine]) -> None:
    """`factory` is a callable or a "module:attribute" path imported on first use."""
    _FACTORIES[name] = factory


def engine_names() -> list[str]:
    return sorted(_FACTORIES)


def create_engine(name: str, **options) -> Engine:
    try:
        factory = _FACTORIES[name]
    except KeyError:
        raise ValueError(f"unknown engine {name!r}; known: {', '.join(engine_names())}") from None
    if isinstance(factory, str):
        module, _, attribute = factory.partition(":")
        factory = getattr(importlib.import_module(module), attribute)
    return factory(**options)


register_engine("llama_cpp", "gristmill.models.llama_cpp_engine:LlamaCppEngine")
register_engine("fake", "gristmill.models.fake:FakeEngine")
register_engine("remote", "gristmill.models.remote:RemoteEngine")
