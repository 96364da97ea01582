"""Every path gristmill uses, in one place. XDG variables and GRISTMILL_* overrides are honoured."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Assembled default model, model fingerprints: safe to delete, rebuilt on demand."""
    override = os.environ.get("GRISTMILL_CACHE_DIR")
    base = Path(override) if override else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gristmill"
    base.mkdir(parents=True, exist_ok=True)
    return base


def state_dir() -> Path:
    """The log file (llama.cpp's native logging is routed there, never onto the terminal)."""
    override = os.environ.get("GRISTMILL_STATE_DIR")
    base = Path(override) if override else Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "gristmill"
    base.mkdir(parents=True, exist_ok=True)
    return base


def log_file() -> Path:
    return state_dir() / "gristmill.log"


def default_database() -> Path:
    return Path(os.environ.get("GRISTMILL_DB") or "gristmill.db")


def project_config() -> Path:
    """Project defaults live beside the work: ./gristmill.toml (or GRISTMILL_CONFIG)."""
    return Path(os.environ.get("GRISTMILL_CONFIG") or "gristmill.toml")
