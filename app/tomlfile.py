"""Reading a user's TOML file (config or style) with errors that name the file, never a traceback."""

from __future__ import annotations

import tomllib
from pathlib import Path


def read_toml(path: Path, error: type[ValueError]) -> dict:
    """Parse `path`; an unreadable or invalid file raises `error` with the path in its message."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as problem:
        raise error(f"{path}: cannot read: {problem}") from None
    except tomllib.TOMLDecodeError as problem:
        raise error(f"{path}: invalid TOML: {problem}") from None
