"""Reading a user's TOML file (config or style) with errors that name the file, never a traceback."""

from __future__ import annotations

import tomllib
from pathlib import Path


def read_toml(path: Path, error: type[ValueError]) -> dict:
    """Parse `path`; an unreadable or invalid file raises `error` with the path in its message."""
    try:
        raw = path.read_bytes()
    except OSError as problem:
        raise error(f"{path}: cannot read: {(problem.strerror or str(problem)).lower()}") from None
    if raw.startswith(b"\xef\xbb\xbf"):
        raise error(f"{path}: starts with a UTF-8 byte-order mark (BOM); save it as UTF-8 without BOM") from None
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as problem:
        raise error(f"{path}: not UTF-8 text (byte {problem.start})") from None
    except tomllib.TOMLDecodeError as problem:
        raise error(f"{path}: invalid TOML: {problem}") from None
