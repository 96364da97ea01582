"""`gristmill add`: import instruction files strictly, all or nothing per file."""

from __future__ import annotations

import hashlib
import json
import unicodedata
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from gristmill.app.readers import SUFFIXES, Blank, Problem, TextLine, read_records
from gristmill.db import Store
from gristmill.db import instructions as instructions_db
from gristmill.db.instructions import NewInstruction

MAX_LISTED_PROBLEMS = 20
MAX_DEPTH = 100  # nesting of a record's extra fields; deeper is refused with its line, never a RecursionError
BATCH = 5000
TYPE_ALIASES = ("instruction_type", "category", "type")


@dataclass(frozen=True)
class KeyMap:
    """Which keys of a record hold the fields; `--instruction-key` and friends change them."""

    instruction: str = "instruction"
    input: str = "input"
    type: str | None = None  # None: look for instruction_type, category, type in that order
    id: str = "id"

    @cached_property
    def type_keys(self) -> tuple[str, ...]:
        """Where a record's type is looked for, in order: the named key, else the aliases another option does not
        name (`--id-key category` names the id). Once per import, not per record."""
        if self.type:
            return (self.type,)
        return tuple(alias for alias in TYPE_ALIASES if alias not in (self.instruction, self.input, self.id))

    def renamed(self) -> dict[str, str]:
        """The optional keys given other names (`--input-key ctx`), by option: a name no record has is a typo,
        which would otherwise import every record without its input, type or id."""
        given = {"--input-key": (self.input, "input"), "--type-key": (self.type, None), "--id-key": (self.id, "id")}
        return {option: key for option, (key, default) in given.items() if key is not None and key != default}


@dataclass
class FileReport:
    path: str
    added: int = 0
    duplicates: int = 0
    blank: int = 0  # blank lines (or CSV rows of empty fields): no record, skipped, counted
    problems: list[str] = field(default_factory=list)
    problem_count: int = 0
    notes: list[str] = field(default_factory=list)  # what was imported otherwise than asked, said with the count

    @property
    def ok(self) -> bool:
        return self.problem_count == 0


def normalize(text: str) -> str:
    """What makes two instructions 'the same': Unicode NFC, whitespace collapsed, case kept."""
    if not unicodedata.is_normalized("NFC", text):
        text = unicodedata.normalize("NFC", text)
    return " ".join(text.split())


def content_hash(instruction: str, input_text: str) -> str:
    key = f"{normalize(instruction)}\x1f{normalize(input_text)}" if input_text else f"{normalize(instruction)}\x1f"
    # 128 bits: collision-free at any realistic scale, and the unique index on it is a third cheaper to build
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def _to_instruction(value: object, source: str, keys: KeyMap, forced_type: str | None) -> NewInstruction | str:
    """Validate one record; returns the instruction or a problem text naming the field."""
    if type(value) is TextLine:
        value = {keys.instruction: str(value)}
    elif type(value) is str:
        return f'expected a JSON object, got a string; write it as {{"{keys.instruction}": ...}}'
    elif type(value) is not dict:
        return f"expected a JSON object, got {_json_type(value)}"
    record = dict(value)
    instruction = record.pop(keys.instruction, _MISSING)
    if instruction is _MISSING:
        present = ", ".join(repr(k) for k in list(record)[:6])
        return (
            f"field '{keys.instruction}': missing (the record has {present}; name the instruction's key "
            "with --instruction-key)"
            if present
            else f"field '{keys.instruction}': missing"
        )
    if type(instruction) is not str:
        return f"field '{keys.instruction}': expected text, got {_json_type(instruction)}"
    if not instruction.strip():
        return f"field '{keys.instruction}': empty"
    input_text = record.pop(keys.input, None)
    if input_text is None:
        input_text = ""
    elif type(input_text) is not str:
        return f"field '{keys.input}': expected text, got {_json_type(input_text)}"
    instruction_type = None
    for key in keys.type_keys:
        if key in record:
            instruction_type = record.pop(key)
            if instruction_type is not None and type(instruction_type) is not str:
                return f"field '{key}': expected text, got {_json_type(instruction_type)}"
            if instruction_type and "," in instruction_type:  # `generate --types` could never select it
                return f"field '{key}': {instruction_type!r}: a type cannot contain ',' (--types separates types by commas)"
            break
    instruction_type = forced_type or (instruction_type or "").strip().lower() or "general"
    external_id = record.pop(keys.id, None)
    if external_id is not None and type(external_id) not in (str, int):
        return f"field '{keys.id}': expected text or integer, got {_json_type(external_id)}"
    for key, text in ((keys.instruction, instruction), (keys.input, input_text)):
        if not _is_text(text):
            return f"field '{key}': not valid Unicode text (a lone surrogate such as \\ud800)"
    if _too_deep(record):
        return f"nested too deeply (more than {MAX_DEPTH} levels of objects and lists)"
    bad = _first_bad_text(record)
    if bad is not None or not _is_text(instruction_type) or (type(external_id) is str and not _is_text(external_id)):
        return f"field '{bad or keys.id}': not valid Unicode text (a lone surrogate such as \\ud800)"
    return NewInstruction(
        instruction,
        input_text,
        instruction_type,
        source,
        content_hash(instruction, input_text),
        None if external_id is None else str(external_id),
        record,
    )


def _too_deep(value: object) -> bool:
    """Iteratively, so a deep record cannot exhaust the stack here or when its metadata is written back as JSON."""
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            return True
        if type(item) is dict:
            stack.extend((v, depth + 1) for v in item.values() if type(v) in (dict, list))
        elif type(item) is list:
            stack.extend((v, depth + 1) for v in item if type(v) in (dict, list))
    return False


def _is_text(text: str) -> bool:
    """False for a lone surrogate (JSON's "\\ud800"): SQLite and every later reader need real UTF-8."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _first_bad_text(value: object, key: str = "") -> str | None:
    """The key (dotted) of the first string in the extra fields that is not valid Unicode, if any."""
    if type(value) is str:
        return None if _is_text(value) else (key or "?")
    if type(value) is dict:
        for name, item in value.items():
            found = (
                _first_bad_text(item, f"{key}.{name}" if key else str(name)) if _is_text(str(name)) else (key or "?")
            )
            if found:
                return found
    elif type(value) is list:
        for item in value:
            found = _first_bad_text(item, key)
            if found:
                return found
    return None


_MISSING = object()


def _json_type(value: object) -> str:
    return {
        dict: "object",
        list: "list",
        bool: "boolean",
        int: "number",
        float: "number",
        type(None): "null",
        str: "text",
    }.get(type(value), type(value).__name__)


def import_file(
    store: Store,
    path: Path,
    keys: KeyMap = KeyMap(),
    forced_type: str | None = None,
    renamed_elsewhere: frozenset[str] = frozenset(),
) -> FileReport:
    """Import one file whole or not at all: any problem imports nothing.

    `renamed_elsewhere`: the renamed-key options (`--input-key`) another file of the same command has the key
    of. A file without that key is then one of another shape (a Dolly file beside an Alpaca one) and imports,
    with a note; alone, a key no record has is a typo and an error.

    Records are staged in a TEMP table (no lock on the database) and inserted in one short transaction
    at the end, so importing a large file never holds the write lock while it reads and validates.
    """
    report = FileReport(str(path))

    def problem(line: int, message: str) -> None:
        report.problem_count += 1
        if len(report.problems) < MAX_LISTED_PROBLEMS:
            report.problems.append(f"{path}:{line}: {message}" if line else f"{path}: {message}")

    if path.is_dir():
        problem(0, "cannot read: is a directory, not a file")
        return report
    if path.suffix.lower() not in SUFFIXES:
        problem(0, f"unsupported file type {path.suffix or '(none)'!r}: use one of {', '.join(SUFFIXES)}")
        return report
    try:
        handle = path.open("rb")
    except OSError as error:
        problem(0, f"cannot read: {(error.strerror or str(error)).lower()}")
        return report

    attempted = 0
    # validate and stage the whole file without holding the write lock, then switch it in at once
    instructions_db.stage_begin(store)
    try:
        with handle:
            batch: list[NewInstruction] = []
            records = 0
            renamed, objects = keys.renamed(), 0
            found: set[str] = set()  # the options whose key some record has
            for item in read_records(path, handle, instruction_key=keys.instruction):
                if isinstance(item, Problem):
                    problem(item.line, item.message)
                    continue
                if isinstance(item, Blank):
                    report.blank += 1
                    continue
                line, value = item
                records += 1
                if renamed and type(value) is dict:
                    objects += 1
                    found.update(option for option, key in renamed.items() if key in value)
                parsed = _to_instruction(value, f"{path.name}:{line}", keys, forced_type)
                if isinstance(parsed, str):
                    problem(line, parsed)
                elif not report.problem_count:  # after a problem, validate on but stage nothing
                    attempted += 1
                    batch.append(parsed)
                    if len(batch) >= BATCH:
                        instructions_db.stage_batch(store, batch)
                        batch = []
            if not records and not report.problem_count:
                problem(0, "empty file: no instructions in it")
            for option in (o for o in renamed if objects and o not in found):
                if option in renamed_elsewhere:
                    report.notes.append(f"{option} {renamed[option]!r}: no record in this file has that key")
                else:
                    problem(0, f"{option} {renamed[option]!r}: no record in this file has that key (a typo?)")
            if report.problem_count:
                return report
            instructions_db.stage_batch(store, batch)
        report.added = instructions_db.stage_commit(store)
    finally:
        instructions_db.stage_discard(store)
    report.duplicates = attempted - report.added
    return report


def keys_mentioned(paths: list[Path], keys: KeyMap) -> dict[Path, set[str]]:
    """For each file, the renamed-key options whose key it mentions at all: a byte search (a CSV's header, a JSON
    file's quoted key), cheap beside the import, and only when a key is renamed and several files are given."""
    renamed = keys.renamed()
    if not renamed or len(paths) < 2:
        return {}
    found: dict[Path, set[str]] = {}
    for path in paths:
        try:
            with path.open("rb") as handle:
                if path.suffix.lower() == ".csv":
                    header = handle.readline().decode("utf-8", "replace")
                    names = {name.strip().strip('"') for name in header.split(",")}
                    found[path] = {option for option, key in renamed.items() if key in names}
                else:
                    found[path] = _quoted_keys_in(handle, renamed)
        except OSError:
            found[path] = set()  # the import itself says why it cannot read the file
    return found


def _quoted_keys_in(handle, renamed: dict[str, str], chunk_size: int = 1 << 20) -> set[str]:
    """The options whose key appears quoted (`"ctx"`) anywhere in the file, read in chunks (a file may be GBs)."""
    needles = {option: json.dumps(key).encode() for option, key in renamed.items()}
    overlap = max(len(n) for n in needles.values()) - 1
    found: set[str] = set()
    tail = b""
    while len(found) < len(needles) and (chunk := handle.read(chunk_size)):
        window = tail + chunk
        found.update(option for option, needle in needles.items() if needle in window)
        tail = window[-overlap:] if overlap else b""
    return found


def renamed_elsewhere(mentioned: dict[Path, set[str]], path: Path) -> frozenset[str]:
    return frozenset(option for other, options in mentioned.items() if other != path for option in options)
