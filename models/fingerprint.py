"""Model fingerprints: SHA-256 over every part of a (possibly split) GGUF, computed once per file version."""

from __future__ import annotations

import hashlib
import json
import re
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


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(8 << 20):
            digest.update(block)
    return digest.hexdigest()


def fingerprint(path: Path) -> str:
    """`sha256:<hex>` of the file, or of the parts' digests joined for a split model.

    Cached by resolved path, size and mtime, so a 20 GB model is hashed once.
    """
    parts = model_parts(path)
    cache_file = cache_dir() / "fingerprints.json"
    try:
        cache = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cache = {}
    digests, changed = [], False
    for part in parts:
        stat = part.stat()
        key = f"{part.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
        if key not in cache:
            cache[key] = _file_sha256(part)
            changed = True
        digests.append(cache[key])
    if changed:
        tmp = cache_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(cache, indent=0))
        tmp.replace(cache_file)
    if len(digests) == 1:
        return f"sha256:{digests[0]}"
    return "sha256:" + hashlib.sha256(",".join(digests).encode()).hexdigest()


def total_size(path: Path) -> int:
    return sum(p.stat().st_size for p in model_parts(path))
