"""Strict, streaming readers for instruction files: each yields (line number, record) or a Problem.

Nothing here guesses: a byte-order mark, bad UTF-8, an unterminated CSV quote or a JSON value of the
wrong shape is reported with its line, never repaired. Files are read a line (or a chunk) at a time.
"""

from __future__ import annotations

import codecs
import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

BOM = codecs.BOM_UTF8
SUFFIXES = (".jsonl", ".json", ".csv", ".txt")
MAX_ITEM_CHARS = 64 << 20  # one list item of a .json file may be this large; the file itself any size


@dataclass(frozen=True)
class Problem:
    line: int  # 0: the file as a whole (cannot read it, empty, wrong type), reported without a line number
    message: str


@dataclass(frozen=True)
class Blank:
    """A line with nothing on it (or only whitespace, or a CSV row of empty fields): no record, but counted."""

    line: int


class TextLine(str):
    """A .txt line, which is an instruction as it stands (a JSON string on a .jsonl line is not one)."""


Row = tuple[int, object]  # (line number, parsed value: dict for jsonl/json/csv, TextLine for txt)


def read_records(
    path: Path, handle: BinaryIO, *, instruction_key: str | None = None
) -> Iterator[Row | Problem | Blank]:
    """`instruction_key`: the column a CSV header must have (a header without it is one problem, not one a row)."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return _jsonl(handle)
    if suffix == ".json":
        return _json_array(handle)
    if suffix == ".csv":
        return _csv(handle, instruction_key)
    if suffix == ".txt":
        return _txt(handle)
    raise ValueError(f"unsupported file type {path.suffix!r}: use one of {', '.join(SUFFIXES)}")


def _not_utf8_text(number: int, raw: bytes) -> Problem | None:
    """UTF-16 (or binary) where UTF-8 text belongs. UTF-16 without a byte-order mark decodes as UTF-8 with a NUL
    after every ASCII letter, so it would import as garbage; one problem for the file, not one a line."""
    if number == 1 and raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        return Problem(1, "file starts with a UTF-16 byte-order mark: it is UTF-16; save it as UTF-8")
    if number == 1 and raw.startswith(b"\x1f\x8b"):
        return Problem(1, "a gzip-compressed file: decompress it first (gunzip)")
    if number == 1 and raw.startswith((b"PK\x03\x04", b"SQLite format 3\x00")):
        return Problem(1, f"a {'zip archive' if raw.startswith(b'PK') else 'SQLite database'}, not a text file")
    if b"\x00" in raw:
        nul = raw.index(0)
        around = [raw[i : i + 1] for i in (nul - 1, nul + 1) if 0 <= i < len(raw)]  # UTF-16: h\0e\0l\0
        utf16 = all(b.isascii() and (b.isalnum() or b.isspace()) for b in around)
        what = "(UTF-16?); save it as UTF-8" if utf16 else "but binary data"
        return Problem(number, f"byte 0x00 at column {nul + 1}: not UTF-8 text {what}")
    return None


def _decoded_lines(handle: BinaryIO) -> Iterator[tuple[int, str] | Problem]:
    """Each line decoded, or a Problem; after a UTF-16 or binary line, nothing more (the rest is the same)."""
    for number, raw in enumerate(handle, start=1):
        if number == 1 and raw.startswith(BOM):
            yield Problem(1, "file starts with a UTF-8 byte-order mark (BOM); save it as UTF-8 without BOM")
            raw = raw[len(BOM) :]
        if wrong := _not_utf8_text(number, raw):
            yield wrong
            return
        try:
            yield number, raw.decode("utf-8")
        except UnicodeDecodeError as error:
            yield Problem(number, f"not valid UTF-8 (byte 0x{raw[error.start]:02x} at column {error.start + 1})")


class _NotStrictJson(ValueError):
    """Python's json reads these, but JSON has no such thing: NaN and Infinity (the metadata column would hold
    text no JSON reader takes, so json_extract fails in sqlite3), or a key given twice (one value silently lost)."""


def _no_constant(name: str) -> float:
    raise _NotStrictJson(f"{name} is not a JSON value (write null or a string)")


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    value = dict(pairs)
    if len(value) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _NotStrictJson(f"key {key!r} appears twice in one object")
            seen.add(key)
    return value


_DECODER = json.JSONDecoder(parse_constant=_no_constant, object_pairs_hook=_unique_keys)


def _jsonl(handle: BinaryIO) -> Iterator[Row | Problem | Blank]:
    """One pass per line, each decoded strictly (no NaN, no key given twice) by one shared decoder."""
    for number, raw in enumerate(handle, start=1):
        if number == 1 and raw.startswith(BOM):
            yield Problem(1, "file starts with a UTF-8 byte-order mark (BOM); save it as UTF-8 without BOM")
            raw = raw[len(BOM) :]
        if wrong := _not_utf8_text(number, raw):  # json.loads would guess UTF-16/32 from NULs; UTF-8 only here
            yield wrong
            return
        if not raw.strip():
            yield Blank(number)
            continue
        if number == 1 and raw.strip() == b"[":  # a pretty-printed list: one problem, not one for every line
            yield Problem(1, "a JSON list, not one JSON object per line: a list belongs in a .json file")
            return
        try:
            yield number, _DECODER.decode(raw.decode("utf-8"))
        except UnicodeDecodeError as error:
            yield Problem(number, f"not valid UTF-8 (byte 0x{raw[error.start]:02x} at column {error.start + 1})")
        except json.JSONDecodeError as error:
            yield Problem(number, f"invalid JSON: {error.msg} (column {error.colno})")
        except RecursionError:
            yield Problem(number, "invalid JSON: nested too deeply")
        except ValueError as error:  # e.g. an integer of more than 4,300 digits
            yield Problem(number, f"invalid JSON: {_value_error(error)}")


def _txt(handle: BinaryIO) -> Iterator[Row | Problem | Blank]:
    for item in _decoded_lines(handle):
        if isinstance(item, Problem):
            yield item
            continue
        number, text = item
        text = text.rstrip("\r\n")
        yield (number, TextLine(text)) if text.strip() else Blank(number)


def _csv(handle: BinaryIO, instruction_key: str | None = None) -> Iterator[Row | Problem | Blank]:
    problems: list[Problem] = []

    def lines() -> Iterator[str]:
        for item in _decoded_lines(handle):
            if isinstance(item, Problem):
                problems.append(item)
                yield ""  # keep csv's line count aligned with the file
            else:
                yield item[1]

    reader = csv.reader(lines(), strict=True)
    header: list[str] | None = None
    record_start = 1
    try:
        for fields in reader:
            if header is None and problems:  # the header line itself is unreadable: nothing below can be read
                yield from problems
                return
            yield from problems
            problems.clear()
            if header is None:
                header = [h.strip() for h in fields]
                record_start = reader.line_num + 1
                repeated = sorted({h for h in header if h and header.count(h) > 1}, key=header.index)
                if repeated:  # a row would keep only the last column of each name: refuse, never drop silently
                    names = ", ".join(map(repr, repeated))
                    yield Problem(1, f"the header names {names} more than once; give every column its own name")
                    return
                if instruction_key is not None and instruction_key not in header:
                    columns = ", ".join(repr(h) for h in header[:8]) + (", ..." if len(header) > 8 else "")
                    separated = [sep for sep in (";", "\t", "|") if len(header) == 1 and sep in header[0]]
                    hint = (
                        f" (is it separated by {separated[0]!r}? gristmill reads comma-separated files)"
                        if separated
                        else ""
                    )
                    yield Problem(
                        1,
                        f"the header has no {instruction_key!r} column (columns: {columns}); "
                        f"name the instruction column with --instruction-key{hint}",
                    )
                    return
                continue
            if not fields or all(not f.strip() for f in fields):
                yield Blank(record_start)
                record_start = reader.line_num + 1
                continue
            if len(fields) != len(header):
                yield Problem(record_start, f"has {len(fields)} fields, the header has {len(header)}")
            elif unnamed := [n for n, (h, f) in enumerate(zip(header, fields, strict=True), 1) if not h and f.strip()]:
                yield Problem(
                    record_start, f"column {unnamed[0]} has a value but no name in the header; name the column"
                )
            else:  # unnamed columns are empty here (a spreadsheet's trailing commas): nothing to keep
                yield record_start, {h: f for h, f in zip(header, fields, strict=True) if h}
            record_start = reader.line_num + 1
    except csv.Error as error:
        yield from problems
        yield Problem(
            record_start,
            f"CSV error: {error} (a quote opened here is never closed?)"
            if "EOF" in str(error) or "end of data" in str(error)
            else f"CSV error: {error}",
        )
        return
    yield from problems
    if header is None:
        yield Problem(0, "empty file: a CSV file needs a header row naming the columns")


def _json_array(handle: BinaryIO, chunk_size: int = 1 << 20) -> Iterator[Row | Problem]:
    """Stream the objects of a top-level JSON list without loading the whole file."""
    decoder = _DECODER
    reader = codecs.getincrementaldecoder("utf-8")("strict")
    buffer, line, eof, state = "", 1, False, "start"
    first = True

    def fill() -> bool:
        nonlocal buffer, eof, first
        raw = handle.read(chunk_size)
        if first and raw.startswith(BOM):
            raise _Stop(Problem(1, "file starts with a UTF-8 byte-order mark (BOM); save it as UTF-8 without BOM"))
        if first and (wrong := _not_utf8_text(1, raw[: raw.find(b"\n") + 1 or len(raw)])):
            raise _Stop(wrong)  # UTF-16: told as such, not as a JSON syntax error
        first = False
        try:
            buffer += reader.decode(raw, final=not raw)
        except UnicodeDecodeError as error:
            raise _Stop(
                Problem(line + buffer.count("\n"), f"not valid UTF-8 (byte 0x{error.object[error.start]:02x})")
            ) from None
        eof = not raw
        return bool(raw)

    def skip_space() -> None:
        nonlocal buffer, line
        stripped = buffer.lstrip()
        line += buffer[: len(buffer) - len(stripped)].count("\n")
        buffer = stripped

    try:
        while True:
            skip_space()
            while not buffer and not eof:
                fill()
                skip_space()
            if not buffer:
                if state == "start":
                    yield Problem(0, "empty file: expected a JSON list of objects")
                elif state != "done":
                    yield Problem(line, "invalid JSON: the list is never closed with ']'")
                return
            if state == "start":
                if buffer[0] != "[":
                    hint = "; one object per line is a .jsonl file" if buffer[0] == "{" else ""
                    yield Problem(line, f"expected a JSON list of objects ('[' ...){hint}")
                    return
                buffer, state = buffer[1:], "first"
            elif state in ("first", "item"):
                if state == "first" and buffer[0] == "]":
                    buffer, state = buffer[1:], "done"
                    continue
                try:
                    value, end = decoder.raw_decode(buffer)
                except json.JSONDecodeError as error:
                    if not eof and len(buffer) < MAX_ITEM_CHARS and fill():  # the chunk may end inside the value
                        continue
                    yield Problem(line + buffer[: error.pos].count("\n"), f"invalid JSON: {error.msg}")
                    return
                except RecursionError:
                    yield Problem(line, "invalid JSON: nested too deeply")
                    return
                except ValueError as error:  # e.g. an integer of more than 4,300 digits
                    yield Problem(line, f"invalid JSON: {_value_error(error)}")
                    return
                if end == len(buffer) and not eof:  # a number may continue in the next chunk
                    if fill():
                        continue
                yield line, value
                line += buffer[:end].count("\n")
                buffer, state = buffer[end:], "comma"
            elif state == "comma":
                if buffer[0] == ",":
                    buffer, state = buffer[1:], "item"
                elif buffer[0] == "]":
                    buffer, state = buffer[1:], "done"
                else:
                    yield Problem(line, "invalid JSON: expected ',' or ']' between list items")
                    return
            else:  # done
                yield Problem(line, "unexpected text after the closing ']'")
                return
    except _Stop as stop:
        yield stop.problem


def _value_error(error: ValueError) -> str:
    text = str(error)
    if "integer string conversion" in text:
        return "a number with too many digits (more than 4,300)"
    return text


class _Stop(Exception):
    def __init__(self, problem: Problem):
        self.problem = problem
