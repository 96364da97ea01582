"""Export accepted records as training data: atomic JSONL plus a manifest saying what is inside.

The native `prompt` is the stored fed prompt, byte for byte; `response` is the reviewer's edit if
there is one, verbatim. The training shapes (`formatted_text`, messages, text) strip the whitespace a
base model puts after "A:", since the training format supplies its own, and come from the style stored
on each record's run, so the same database exports the same bytes anywhere. The database is only read,
in one read transaction: review going on meanwhile never shows up half-way through a file.

To add a format: name it in FORMATS and shape it in `to_record` (or a module beside this one that
wraps it); the row it gets carries every column `db.exports.accepted_pages` selects.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import socket
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, UTC
from pathlib import Path

from gristmill import __version__
from gristmill.app import export_formats
from gristmill.app.dedup import Deduplicator, Record
from gristmill.app.export_notes import ExportNotes, edit_flags, excluded_by_edit
from gristmill.app.generate import run_style
from gristmill.app.prompts import Style, StyleError
from gristmill.db import Store
from gristmill.db.connection import json_column
from gristmill.db.generations import process_alive
from gristmill.db import exports as exports_db
from gristmill.db import runs as runs_db
from gristmill.db.exports import ExportFilter

FORMATS = ("native", "messages", "text", *export_formats.FORMATS)
RECORD_DEDUP_FORMATS = ("dpo", "kto")  # their dedup: exact repeats of a whole record (the rule "record")


class ExportError(RuntimeError):
    """An export cannot be made as asked; the message names what (e.g. the run whose style is gone)."""


@dataclass
class ExportReport:
    path: str
    records: int = 0
    sha256: str = ""
    dropped: list = field(default_factory=list)
    manifest_path: str = ""
    dedup: str = "pair"
    accepted: int = 0  # accepted records the filters kept, before dedup
    accepted_in_database: int = 0  # every exportable accepted record, whatever the filters
    left_out_by_filters: int | None = 0  # None for dpo and kto, whose records are pairs and labels
    dropped_by: dict = field(default_factory=dict)  # {"exact": n, "near": n} for the dedup rule
    details: dict = field(default_factory=dict)  # a training format's counts: derivation, labels, ids' sources
    not_exportable: dict = field(default_factory=dict)  # accepted generations (any filter) no export can include
    notes: ExportNotes | None = None  # records a trainer reads otherwise than meant (cut short, control-token text)

    def not_exportable_line(self) -> str | None:
        """What the command and the app say of the accepted records no export can include, if any."""
        if not self.not_exportable:
            return None
        reasons = "; ".join(f"{n:,} {why}" for why, n in self.not_exportable.items())
        total = sum(self.not_exportable.values())
        return f"not exportable: the database holds {total:,} accepted record(s) no export can include: {reasons}"


def dedup_problem(fmt: str, dedup: str | None) -> str | None:
    """Why the rule `dedup` (None: none asked for) cannot apply to `fmt`: dpo and kto records are pairs and labels,
    whose only repeat is a whole record repeated (they drop those), so any other rule would be ignored."""
    if fmt in RECORD_DEDUP_FORMATS and dedup not in (None, "off"):
        return (
            f"--format {fmt} drops only exact repeats of a whole record; --dedup {dedup} does not apply "
            "(leave it out, or give off)"
        )
    return None


def manifest_path_for(out: Path) -> Path:
    if not out.name:  # `.` or `/`: a directory, where the export would have no file to rename over
        raise ExportError(f"{out} is a directory; give a file name")
    return out.with_name(out.name + ".manifest.json")


def refuse_database_files(database: str | Path, out: Path) -> None:
    """An export renames a new file over OUT and OUT.manifest.json: neither may be the database or its journal
    files, or the export would replace every generation and review with the JSONL it just wrote."""
    db = Path(database).resolve()
    guarded = [db, *(db.with_name(db.name + suffix) for suffix in ("-wal", "-shm", "-journal"))]
    for target in (out, manifest_path_for(out)):
        resolved = target.resolve()
        for path in guarded:
            same = resolved == path or (target.exists() and path.exists() and os.path.samefile(target, path))
            if same:
                raise ExportError(f"{target} would replace the database file {path.name}; give another output path")


def user_message(instruction: str, input_text: str) -> str:
    return f"{instruction}\n\n{input_text}" if input_text else instruction


class _FormattedText:
    """Renders `formatted_text` with each run's own style, as stored on the run (never re-read from a file).

    Runs from before styles were stored (m004) fall back to their style's name or path; if that cannot be
    loaded the export fails naming the run, instead of silently using another format.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self._styles: dict[int, Style] = {}

    def style(self, run_id: int) -> Style:
        if run_id not in self._styles:
            run = runs_db.require(self.store, run_id)
            try:
                self._styles[run_id] = run_style(run)
            except StyleError as error:
                raise ExportError(
                    f"run {run_id}: its style {run.settings.get('style', run.style)!r} is not stored on the run "
                    f"(made before gristmill stored styles) and cannot be loaded: {error}. Restore the style "
                    f"file at that path, or leave the run out (--run)"
                ) from None
        return self._styles[run_id]

    def __call__(self, row: dict) -> str:
        return self.style(row["run_id"]).training_text(row["instruction"], row["input"], row["response"].strip())


def to_record(row: dict, fmt: str, formatted_text: str, params: dict, flags: list[str]) -> dict:
    """A native, messages or text record; `params` (the run's) and `flags` (the model's) as parsed once."""
    if fmt == "text":
        return {"text": formatted_text}
    if fmt == "messages":
        return {
            "messages": [
                {"role": "user", "content": user_message(row["instruction"], row["input"])},
                {"role": "assistant", "content": row["response"].strip()},
            ]
        }
    record = {
        "id": row["id"],
        "instruction": row["instruction"],
        "input": row["input"],
        "instruction_type": row["instruction_type"],
        "prompt": row["prompt"],
        "response": row["response"],
    }
    if row["edited_response"] is not None:  # the model's text and its flags; `flags` are the edit's
        record["original_response"] = row["completion"]
        record["original_flags"] = flags
    record.update(
        {
            "formatted_text": formatted_text,
            "style": row["style"],
            "model": {"name": row["model"], "fingerprint": row["model_fingerprint"]},
            "params": params,
            "seed": row["seed"],
            "prompt_tokens": row["prompt_tokens"],
            "completion_tokens": row["completion_tokens"],
            "prompt_token_ids_sha256": row["prompt_token_ids_sha256"],
            "finish_reason": row["finish_reason"],
            "flags": flags if row["edited_response"] is None else edit_flags(row["edited_response"]),
            "reviewer": row["reviewer"],
            "reviewed_at": row["reviewed_at"],
        }
    )
    return record


# JSON allows these raw, but a consumer that splits the file with str.splitlines() takes each for a line end
_LINE_BREAKS_JSON_ALLOWS = re.compile("[\u2028\u2029\u0085]")


def json_line(record: dict) -> bytes:
    """One JSONL line: UTF-8 kept as text, the Unicode line breaks that JSON leaves raw escaped (the value is
    the same to any JSON reader)."""
    line = json.dumps(record, ensure_ascii=False)
    if _LINE_BREAKS_JSON_ALLOWS.search(line):  # rare: no new string for the common line
        line = _LINE_BREAKS_JSON_ALLOWS.sub(lambda m: f"\\u{ord(m.group()):04x}", line)
    return (line + "\n").encode("utf-8")


def atomic_write(
    path: Path, chunks: Iterator[bytes], mode: int | None = None, before_replace: Callable[[], None] | None = None
) -> str:
    """Write to a temporary file beside `path`, fsync, rename over it, fsync the directory.

    A crash at any moment leaves either the previous complete file or none, never a partial one.
    `mode` sets the file's permissions before the rename (mkstemp makes 0600); `before_replace` runs once the
    new file is complete, just before the rename. Returns the SHA-256.
    """
    directory = path.parent.resolve()
    digest = hashlib.sha256()
    _remove_leftovers(directory, path.name)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.{_HOST}.{os.getpid()}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            for chunk in chunks:
                digest.update(chunk)
                handle.write(chunk)
            handle.flush()
            if mode is not None:
                os.fchmod(handle.fileno(), mode)
            os.fsync(handle.fileno())
        if before_replace is not None:
            before_replace()
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


_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"


def _remove_leftovers(directory: Path, name: str) -> None:
    """Temporary files an export to `name` left when its process was killed (kill -9 runs no cleanup): each
    names its host and process, and one of this host whose process is gone is removed. A live export's file,
    another output's and another host's (a shared disk) are left alone."""
    ours = re.compile(rf"\.{re.escape(name)}\.{re.escape(_HOST)}\.(\d+)\.[A-Za-z0-9_]+\.tmp")
    for leftover in directory.glob(f".{glob.escape(name)}.*.tmp"):
        match = ours.fullmatch(leftover.name)
        if match and not process_alive(int(match.group(1))):
            leftover.unlink(missing_ok=True)


def _pages(rows: Iterator[dict], size: int = 1000) -> Iterator[list[dict]]:
    page: list[dict] = []
    for row in rows:
        page.append(row)
        if len(page) == size:
            yield page
            page = []
    if page:
        yield page


def _output_mode() -> int:
    """The permissions a new file gets under the current umask (mkstemp's files are 0600)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def export(
    store: Store,
    out: Path,
    *,
    fmt: str = "native",
    where: ExportFilter = ExportFilter(),
    dedup: str | bool = "pair",
    dedup_threshold: float = 0.8,
    options: export_formats.FormatOptions | None = None,
) -> ExportReport:
    """Write the records of `fmt` to `out` (JSONL) and `out.manifest.json`, from one database snapshot.

    `dedup` is a rule of `app.dedup.MODES`; True and False (the older flag) mean "pair" and "off".
    """
    options = options or export_formats.FormatOptions()
    if isinstance(dedup, bool):
        dedup = "pair" if dedup else "off"
    if problem := dedup_problem(fmt, None if dedup == "pair" else dedup):  # "pair" is also the default here
        raise ExportError(problem)
    if fmt in RECORD_DEDUP_FORMATS and dedup == "pair":  # the default, which for pairs and labels means this
        dedup = "record"
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")
    refuse_database_files(store.path, out)
    report = ExportReport(str(out), dedup=dedup)
    deduplicator = Deduplicator(
        "pair" if dedup == "record" else dedup,  # for dpo and kto it only collects what the shaper drops
        dedup_threshold,
        fetch=lambda ids: {
            r["id"]: Record(r["id"], r["instruction"], r["input"], r["response"])
            for r in exports_db.responses(store, ids)
        },
    )
    formatted = _FormattedText(store)
    runs: dict[int, dict] = {}
    types: Counter[str] = Counter()
    shaper = (
        export_formats.Shaper(
            store,
            fmt,
            style_of=formatted.style,
            deduplicator=deduplicator if dedup != "off" else None,
            options=options,
        )
        if fmt in export_formats.FORMATS
        else None
    )

    notes = report.notes = ExportNotes(fmt)

    def lines() -> Iterator[bytes]:
        pages = _pages(shaper.rows(where)) if shaper else exports_db.accepted_pages(store, where)
        for page in pages:
            if where.exclude_flags and not (shaper and shaper.deduplicates):  # dpo and kto: in Shaper.rows
                page = [row for row in page if not excluded_by_edit(row, where.exclude_flags)]
            if shaper and shaper.deduplicates:  # dpo and kto drop whole-record repeats themselves
                keep = [True] * len(page)
            else:
                keep = deduplicator.filter([Record(r["id"], r["instruction"], r["input"], r["response"]) for r in page])
            for row, kept in zip(page, keep, strict=True):
                if not kept:
                    continue
                run = runs.get(row["run_id"])
                if run is None:
                    run = runs[row["run_id"]] = {
                        "model": row["model"],
                        "model_fingerprint": row["model_fingerprint"],
                        "style": row["style"],
                        "params": json_column(row["params"], "runs", "params", row["run_id"]),
                    }
                types[row["instruction_type"]] += 1
                report.records += 1
                flags = json_column(row["flags"], "generations", "flags", row["id"])
                record = shaper.record(row) if shaper else to_record(row, fmt, formatted(row), run["params"], flags)
                notes.see(row, record, flags)
                yield json_line(record)

    try:
        with exports_db.snapshot(store):
            report.not_exportable = exports_db.not_exportable(store)
            report.accepted_in_database = exports_db.count_accepted(store)
            # the old manifest goes just before the new data takes its place: a crash in between leaves data with
            # no manifest, never data beside the manifest of another export
            report.sha256 = atomic_write(
                out, lines(), _output_mode(), before_replace=lambda: manifest_path_for(out).unlink(missing_ok=True)
            )
    finally:
        if shaper:
            shaper.close()
    report.accepted = deduplicator.seen if not (shaper and shaper.deduplicates) else report.records
    if shaper and shaper.deduplicates:  # dpo and kto records are pairs and labels, not accepted records
        report.left_out_by_filters = None
    else:
        report.left_out_by_filters = report.accepted_in_database - report.accepted
    report.dropped = [asdict(d) for d in deduplicator.dropped]
    report.dropped_by = deduplicator.counts() if dedup != "off" else {}
    manifest = {
        "file": out.name,
        "records": report.records,
        "sha256": report.sha256,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "gristmill_version": __version__,
        "database": str(Path(store.path).resolve()),
        "format": fmt,
        "filters": {k: v for k, v in asdict(where).items() if v not in (None, ())},
        "runs": {str(k): v for k, v in sorted(runs.items())},
        "types": dict(sorted(types.items())),
        "accepted_in_database": report.accepted_in_database,
        "left_out_by_filters": report.left_out_by_filters,
        **notes.manifest(),
        "accepted_in_database_without_run_or_instruction": report.not_exportable.get(
            exports_db.NO_RUN_OR_INSTRUCTION, 0
        ),
        "accepted_in_database_not_exportable": report.not_exportable,
        "dedup": {
            "rule": dedup,
            "enabled": dedup != "off",
            "threshold": dedup_threshold if dedup not in ("off", "record") else None,
            "accepted": report.accepted,
            "removed": len(report.dropped),
            "removed_by": report.dropped_by,
            "pairs": report.dropped,
        },
    }
    if shaper:
        report.details = shaper.summary()
        manifest.update(shaper.manifest())
    manifest_path = manifest_path_for(out)
    atomic_write(
        manifest_path, iter([json.dumps(manifest, ensure_ascii=False, indent=2).encode() + b"\n"]), _output_mode()
    )
    report.manifest_path = str(manifest_path)
    return report
