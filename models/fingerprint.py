"""Model fingerprints: SHA-256 over every part of a (possibly split) GGUF, computed once per file version."""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable
from pathlib import Path

from gristmill.locations import cache_dir

SPLIT_PATTERN = re.compile(r"^(?P<stem>.*)-(?P<index>\d{5})-of-(?P<count>\d{5})\.gguf$")


def model_parts(path: Path) -> list[Path]:
    """All files of a split GGUF given its first part (`…-00001-of-00005.gguf`), else just the file."""
    match = SPLIT_PATTERN.match(path.name)
    if not match:
        return [path]
    count = int(match["count"])
    parts = [path.with_name(f"{match['stem']}-{i:05d}-of-{count:05d}.gguf") for i in range(1, count + 1)]
    missing = [p.name for p in parts if not p.exists()]
    if missing:
        raise FileNotFoundError(f"split model is missing part(s): {', '.join(missing)}")
    return parts


BLOCK = 8 << 20

Progress = Callable[[int, int], None]  # (bytes hashed so far, bytes in all)


def _file_sha256(path: Path, on_block: Callable[[int], None] | None = None) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(BLOCK):
            digest.update(block)
            if on_block:
                on_block(len(block))
    return digest.hexdigest()


def _cache_file() -> Path:
    return cache_dir() / "fingerprints.json"


def _load_cache() -> dict[str, str]:
    try:
        cache = json.loads(_cache_file().read_text())
    except (OSError, ValueError):
        return {}
    return cache if isinstance(cache, dict) else {}


def _key(part: Path) -> str:
    stat = part.stat()
    return f"{part.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"


def _combine(digests: list[str]) -> str:
    if len(digests) == 1:
        return f"sha256:{digests[0]}"
    return "sha256:" + hashlib.sha256(",".join(digests).encode()).hexdigest()


def cached_fingerprint(path: Path) -> str | None:
    """The fingerprint if every part is already hashed at its current size and mtime, else None (never hashes).

    `doctor` and `preview` show this and nothing more: hashing 20 GB is only worth it where a run needs it.
    """
    cache = _load_cache()
    digests = []
    for part in model_parts(path):
        digest = cache.get(_key(part))
        if digest is None:
            return None
        digests.append(digest)
    return _combine(digests)


def fingerprint(path: Path, on_progress: Progress | None = None) -> str:
    """`sha256:<hex>` of the file, or of the parts' digests joined for a split model.

    Cached by resolved path, size and mtime, so a 20 GB model is hashed once; `on_progress` hears about
    every 8 MiB block while a part is being hashed.
    """
    parts = model_parts(path)
    cache = _load_cache()
    keys = [_key(part) for part in parts]
    todo = sum(part.stat().st_size for part, key in zip(parts, keys, strict=False) if key not in cache)
    done = 0

    def advance(n: int) -> None:
        nonlocal done
        done += n
        if on_progress:
            on_progress(done, todo)

    digests, changed = [], False
    for part, key in zip(parts, keys, strict=False):
        if key not in cache:
            cache[key] = _file_sha256(part, advance)
            changed = True
        digests.append(cache[key])
    if changed:
        cache_file = _cache_file()
        tmp = cache_file.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache, indent=0))
        tmp.replace(cache_file)
    return _combine(digests)


def total_size(path: Path) -> int:
    return sum(p.stat().st_size for p in model_parts(path))
