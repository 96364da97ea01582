"""Export accepted records as training data: atomic JSONL plus a manifest saying what is inside.

The native `prompt` is the stored fed prompt, byte for byte; `response` is the reviewer's edit if
there is one, verbatim. The training shapes (`formatted_text`, messages, text) strip the whitespace a
base model puts after "A:", since the training format supplies its own. The database is only read.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from gristmill import __version__
from gristmill.app import export_formats
from gristmill.app.dedup import Deduplicator
from gristmill.app.prompts import DEFAULT_TRAINING_FORMAT, DEFAULT_TRAINING_INPUT, StyleError, fill, load_style
from gristmill.db import Store
from gristmill.db import exports as exports_db
from gristmill.db.exports import ExportFilter

FORMATS = ("native", "messages", "text", *export_formats.FORMATS)


@dataclass
class ExportReport:
    path: str
    records: int = 0
    sha256: str = ""
    dropped: list = field(default_factory=list)
    manifest_path: str = ""
    details: dict = field(default_factory=dict)  # a training format's counts: derivation, labels, ids' sources


def user_message(instruction: str, input_text: str) -> str:
    return f"{instruction}\n\n{input_text}" if input_text else instruction


class _FormattedText:
    """Renders `formatted_text` with each run's style; a style file that is gone falls back to the default."""

    def __init__(self) -> None:
        self._styles: dict[str, object] = {}

    def __call__(self, row: dict) -> str:
        name = json.loads(row["settings"]).get("style", row["style"])
        if name not in self._styles:
            try:
                self._styles[name] = load_style(name)
            except StyleError:
                self._styles[name] = None
        style = self._styles[name]
        if style is None:
            block = fill(DEFAULT_TRAINING_INPUT, {"input": row["input"]}) if row["input"] else ""
            return fill(DEFAULT_TRAINING_FORMAT, {"instruction": row["instruction"], "input": row["input"],
                                                  "input_block": block, "response": row["response"].strip()})
        return style.training_text(row["instruction"], row["input"], row["response"].strip())


def to_record(row: dict, fmt: str, formatted_text: str) -> dict:
    if fmt == "text":
        return {"text": formatted_text}
    if fmt == "messages":
        return {"messages": [{"role": "user", "content": user_message(row["instruction"], row["input"])},
                             {"role": "assistant", "content": row["response"].strip()}]}
    record = {
        "id": row["id"], "instruction": row["instruction"], "input": row["input"],
        "instruction_type": row["instruction_type"], "prompt": row["prompt"], "response": row["response"],
    }
    if row["edited_response"] is not None:
        record["original_response"] = row["completion"]
    record.update({
        "formatted_text": formatted_text, "style": row["style"],
        "model": {"name": row["model"], "fingerprint": row["model_fingerprint"]},
        "params": json.loads(row["params"]), "seed": row["seed"], "prompt_tokens": row["prompt_tokens"],
        "completion_tokens": row["completion_tokens"], "prompt_token_ids_sha256": row["prompt_token_ids_sha256"],
        "finish_reason": row["finish_reason"], "flags": json.loads(row["flags"]), "reviewer": row["reviewer"],
        "reviewed_at": row["reviewed_at"],
    })
    return record


def atomic_write(path: Path, chunks: Iterator[bytes]) -> str:
    """Write to a temporary file beside `path`, fsync, rename over it, fsync the directory.

    A crash at any moment leaves either the previous complete file or none, never a partial one.
    Returns the SHA-256 of what was written.
    """
    directory = path.parent.resolve()
    digest = hashlib.sha256()
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            for chunk in chunks:
                digest.update(chunk)
                handle.write(chunk)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return digest.hexdigest()


def export(store: Store, out: Path, *, fmt: str = "native", where: ExportFilter = ExportFilter(),
           dedup: bool = True, dedup_threshold: float = 0.8,
           options: export_formats.FormatOptions = export_formats.FormatOptions()) -> ExportReport:
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")
    report = ExportReport(str(out))
    deduplicator = Deduplicator(dedup_threshold) if dedup else None
    formatted = _FormattedText()
    runs: dict[int, dict] = {}
    types: Counter[str] = Counter()
    shaper = (export_formats.Shaper(store, fmt, deduplicator=deduplicator, options=options)
              if fmt in export_formats.FORMATS else None)

    def lines() -> Iterator[bytes]:
        for row in shaper.rows(where) if shaper else exports_db.accepted(store, where):
            instruction = user_message(row["instruction"], row["input"])
            if deduplicator and not (shaper and shaper.deduplicates) and not deduplicator.keep(
                    row["id"], instruction, row["response"]):
                continue
            runs.setdefault(row["run_id"], {"model": row["model"], "model_fingerprint": row["model_fingerprint"],
                                            "style": row["style"], "params": json.loads(row["params"])})
            types[row["instruction_type"]] += 1
            report.records += 1
            record = shaper.record(row) if shaper else to_record(row, fmt, formatted(row))
            yield (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")

    try:
        report.sha256 = atomic_write(out, lines())
    finally:
        if shaper:
            shaper.close()
    report.dropped = [asdict(d) for d in deduplicator.dropped] if deduplicator else []
    manifest = {
        "file": out.name, "records": report.records, "sha256": report.sha256,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "gristmill_version": __version__, "database": str(Path(store.path).resolve()), "format": fmt,
        "filters": {k: v for k, v in asdict(where).items() if v not in (None, ())},
        "runs": {str(k): v for k, v in sorted(runs.items())}, "types": dict(sorted(types.items())),
        "dedup": {"enabled": dedup, "threshold": dedup_threshold if dedup else None,
                  "removed": len(report.dropped), "pairs": report.dropped},
    }
    if shaper:
        report.details = shaper.summary()
        manifest.update(shaper.manifest())
    manifest_path = out.with_name(out.name + ".manifest.json")
    atomic_write(manifest_path, iter([json.dumps(manifest, ensure_ascii=False, indent=2).encode() + b"\n"]))
    report.manifest_path = str(manifest_path)
    return report
