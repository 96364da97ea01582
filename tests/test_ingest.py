"""`gristmill add`: every format, strict errors with file:line:field, all-or-nothing per file, streaming."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from gristmill.app import readers
from gristmill.app.cli import app
from gristmill.app.ingest import import_file
from gristmill.db import instructions as instructions_db
from tests.conftest import write

runner = CliRunner()


def add(*args: str):
    return runner.invoke(app, ["add", *args])


def stored(store) -> list[dict]:
    return [dict(r) for r in store.conn.execute("SELECT * FROM instructions ORDER BY id")]


def test_jsonl_with_aliases_input_metadata_and_external_id(tmp_path, store):
    path = write(tmp_path / "a.jsonl",
                 '{"instruction": "Why?", "input": "ctx", "category": "Open_QA", "id": 7, "source_ds": "dolly"}\n'
                 '\n{"instruction": "How?", "type": "math"}\n')
    report = import_file(store, path)
    assert (report.ok, report.added, report.duplicates) == (True, 2, 0)
    rows = stored(store)
    assert rows[0]["input"] == "ctx" and rows[0]["instruction_type"] == "open_qa"
    assert rows[0]["external_id"] == "7" and json.loads(rows[0]["metadata"]) == {"source_ds": "dolly"}
    assert rows[0]["source"] == "a.jsonl:1" and rows[1]["source"] == "a.jsonl:3"
    assert rows[1]["instruction_type"] == "math"


def test_json_csv_txt_and_type_override(tmp_path, store):
    write(tmp_path / "a.json", '[{"instruction": "One"},\n {"instruction": "Two", "input": ""}]')
    write(tmp_path / "b.csv", 'instruction,input,category\n"Three, with comma","multi\nline",fact\n')
    write(tmp_path / "c.txt", "Four\n\n  \nFive\n")
    result = add(str(tmp_path / "a.json"), str(tmp_path / "b.csv"), str(tmp_path / "c.txt"), "--type", "Creative")
    assert result.exit_code == 0, result.output
    rows = stored(store)
    assert [r["instruction"] for r in rows] == ["One", "Two", "Three, with comma", "Four", "Five"]
    assert rows[2]["input"] == "multi\nline"
    assert {r["instruction_type"] for r in rows} == {"creative"}
    assert rows[4]["source"] == "c.txt:4"


def test_a_spreadsheets_trailing_unnamed_empty_columns_import(tmp_path, store):
    result = add(str(write(tmp_path / "s.csv", "instruction,input,,\nHello,x,,\nWorld,, ,\n")))
    assert result.exit_code == 0, result.output
    assert [(r["instruction"], r["input"], r["metadata"]) for r in stored(store)] == [
        ("Hello", "x", "{}"), ("World", "", "{}")]


def test_blank_lines_are_skipped_and_counted_in_every_line_format(tmp_path, store):
    """No record, so nothing to import; but what a default skips is said: each file's line counts them."""
    files = [write(tmp_path / "a.txt", "Four\n\n  \nFive\n"),
             write(tmp_path / "b.jsonl", '{"instruction": "Six"}\n\n   \n{"instruction": "Seven"}\n'),
             write(tmp_path / "c.csv", "instruction,input\nEight,x\n,\n\nNine,y\n")]
    result = add(*map(str, files))
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    for path in files:
        assert f"{path}: added 2, skipped 0 duplicate(s) and 2 blank line(s)" in said
    assert instructions_db.count(store) == 6


def test_duplicates_are_skipped_within_a_file_and_against_the_database(tmp_path, store):
    path = write(tmp_path / "a.jsonl", '{"instruction": "Same  thing"}\n{"instruction": "Same thing "}\n')
    assert import_file(store, path).duplicates == 1
    again = import_file(store, write(tmp_path / "b.txt", "Same thing\nNew one\n"))
    assert (again.added, again.duplicates) == (1, 1)
    assert instructions_db.count(store) == 2


def test_key_mapping_options(tmp_path, store):
    path = write(tmp_path / "a.jsonl", '{"prompt": "Do it", "context": "c", "kind": "rewrite"}\n')
    result = add(str(path), "--instruction-key", "prompt", "--input-key", "context", "--type-key", "kind")
    assert result.exit_code == 0, result.output
    assert (stored(store)[0]["input"], stored(store)[0]["instruction_type"]) == ("c", "rewrite")


def test_a_key_named_for_the_id_is_the_id_though_it_is_a_type_alias(tmp_path, store):
    """`--id-key category` had stored the value as the type (an alias of it) and no id."""
    path = write(tmp_path / "a.jsonl", '{"prompt": "Do it", "category": "q-17"}\n')
    assert add(str(path), "--instruction-key", "prompt", "--id-key", "category").exit_code == 0
    row = stored(store)[0]
    assert (row["external_id"], row["instruction_type"]) == ("q-17", "general")


@pytest.mark.parametrize("name, content, expected", [
    ("a.jsonl", '{"instruction": "ok"}\n{"input": "x"}\n', "a.jsonl:2: field 'instruction': missing"),
    ("a.jsonl", '{"instruction": "ok"}\n{"instruction": 5}\n', "a.jsonl:2: field 'instruction': expected text, got number"),
    ("a.jsonl", '{"instruction": "   "}\n', "a.jsonl:1: field 'instruction': empty"),
    ("a.jsonl", '{"instruction": "ok"}\n{"instruction": "x",\n', "a.jsonl:2: invalid JSON"),
    ("a.jsonl", '["instruction"]\n', "a.jsonl:1: expected a JSON object, got list"),
    ("a.jsonl", '{"instruction": "ok"}\n"a bare string"\n', "a.jsonl:2: expected a JSON object, got a string"),
    ("a.json", '["a bare string"]', "a.json:1: expected a JSON object, got a string"),
    ("a.jsonl", '{"instruction": "ok", "input": ["x"]}\n', "a.jsonl:1: field 'input': expected text, got list"),
    ("a.jsonl", '{"instruction": "ok", "category": 3}\n', "a.jsonl:1: field 'category': expected text, got number"),
    ("a.csv", 'instruction,input\n"ok","never closed\n', "a.csv:2: CSV error"),
    ("a.csv", 'prompt,input\nhello,x\n', "a.csv:1: the header has no 'instruction' column"),
    ("a.csv", 'instruction,input\nhello,x,extra\n', "a.csv:2: has 3 fields, the header has 2"),
    ("a.csv", 'instruction,instruction\nkept,dropped\n', "a.csv:1: the header names 'instruction' more than once"),
    ("a.csv", 'instruction,,\nhello,,y\n', "a.csv:2: column 3 has a value but no name in the header"),
    ("a.json", '{"instruction": "not a list"}', "a.json:1: expected a JSON list"),
    ("a.json", '[{"instruction": "ok"},\n {"instruction": "x"} {"instruction": "y"}]',
     "a.json:2: invalid JSON: expected ',' or ']'"),
    ("a.json", '[{"instruction": "ok"},\n', "a.json:2: invalid JSON: the list is never closed"),
    ("a.yaml", 'instruction: x\n', "a.yaml: unsupported file type"),
    # UTF-16 without a byte-order mark is valid UTF-8 with a NUL after each letter: it imported as garbage
    ("a.txt", "hello\nworld\n".encode("utf-16-le"), "a.txt:1: byte 0x00 at column 2: not UTF-8 text (UTF-16?)"),
    ("a.csv", "instruction\nhello\n".encode("utf-16-le"), "a.csv:1: byte 0x00 at column 2: not UTF-8 text"),
    ("a.csv", "instruction\nhello\n".encode("utf-16"), "a.csv:1: file starts with a UTF-16 byte-order mark"),
    ("a.jsonl", '{"instruction": "hi"}\n'.encode("utf-16"), "a.jsonl:1: file starts with a UTF-16 byte-order mark"),
    ("a.json", '[{"instruction": "hi"}]'.encode("utf-16"), "a.json:1: file starts with a UTF-16 byte-order mark"),
    ("a.json", '[{"instruction": "hi"}]'.encode("utf-16-le"), "a.json:1: byte 0x00 at column 2: not UTF-8 text"),
])
def test_bad_input_names_file_line_field_and_imports_nothing(tmp_path, store, name, content, expected):
    path = write(tmp_path / name, content)
    result = add(str(path))
    assert result.exit_code == 2
    assert expected.replace("a.", str(tmp_path / "a."), 1) in result.output, result.output
    assert "Traceback" not in result.output
    assert instructions_db.count(store) == 0


def test_bom_and_bad_utf8_are_errors_not_repairs(tmp_path, store):
    bom = write(tmp_path / "bom.jsonl", b'\xef\xbb\xbf{"instruction": "x"}\n')
    bad = write(tmp_path / "bad.txt", b"fine\ncaf\xc3\n")
    truncated = write(tmp_path / "t.json", b'[{"instruction": "caf\xc3"}]')
    result = add(str(bom), str(bad), str(truncated))
    assert result.exit_code == 2
    assert f"{bom}:1: file starts with a UTF-8 byte-order mark" in result.output
    assert f"{bad}:2: not valid UTF-8 (byte 0xc3 at column 4)" in result.output
    assert f"{truncated}:1: not valid UTF-8" in result.output
    assert instructions_db.count(store) == 0


def test_a_bad_file_does_not_stop_good_files(tmp_path, store):
    good = write(tmp_path / "good.txt", "one\ntwo\n")
    bad = write(tmp_path / "bad.jsonl", "{}\n")
    result = add(str(bad), str(good))
    assert result.exit_code == 2
    assert instructions_db.count(store) == 2


def test_problem_listing_stops_at_twenty_then_counts(tmp_path, store):
    path = write(tmp_path / "many.jsonl", "{}\n" * 25)
    result = add(str(path))
    assert result.exit_code == 2
    assert result.output.count("field 'instruction': missing") == 20
    assert "and 5 more problem(s)" in result.output


def test_one_megabyte_line_imports(tmp_path, store):
    big = "x" * (1 << 20)
    result = add(str(write(tmp_path / "big.jsonl", json.dumps({"instruction": big}) + "\n")))
    assert result.exit_code == 0
    assert len(stored(store)[0]["instruction"]) == 1 << 20


def test_json_list_streams_across_chunk_boundaries(tmp_path):
    items = [{"instruction": f"item {n} " + "é" * (n % 7), "input": "z" * n} for n in range(200)]
    path = write(tmp_path / "a.json", json.dumps(items, ensure_ascii=False, indent=1))
    with path.open("rb") as handle:
        rows = list(readers._json_array(handle, chunk_size=7))  # tiny chunks split values and characters
    assert [value for _, value in rows] == items
    assert rows[1][0] == 6  # line numbers follow the file


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(st.binary(max_size=60), st.text(max_size=60).map(str.encode),
                          st.sampled_from([b'{"instruction": 1}', b'[1,2]', b'null', b'{"instruction": ""}',
                                           b'{"instruction": "ok"', b'"str"', b'\xff\xfe'])),
                min_size=1, max_size=8),
       st.sampled_from([".jsonl", ".json", ".csv", ".txt"]))
def test_garbage_never_tracebacks(tmp_path, lines, suffix):
    path = tmp_path / f"garbage{suffix}"
    path.write_bytes(b"\n".join(lines))
    result = add(str(path))
    assert result.exit_code in (0, 2), result.output
    assert "Traceback" not in result.output
    if result.exit_code == 2:
        assert all(line.startswith(str(path)) for line in result.output.splitlines() if line.strip())


def test_a_renamed_key_another_file_of_the_command_has_imports_a_file_without_it_with_a_note(tmp_path):
    """Dolly beside Alpaca in one `add --input-key context`: the Alpaca file had been refused. Alone, a key no
    record has is still a typo and an error."""
    from typer.testing import CliRunner

    from gristmill.app.cli import app

    dolly = write(tmp_path / "dolly.jsonl", '{"instruction": "Summarize", "context": "Long text."}\n')
    alpaca = write(tmp_path / "alpaca.json", '[{"instruction": "Say hi", "input": ""}]')
    result = CliRunner().invoke(app, ["add", str(dolly), str(alpaca), "--input-key", "context"])
    said = " ".join(result.output.split())
    assert result.exit_code == 0, result.output
    assert "alpaca.json: --input-key 'context': no record in this file has that key: imported without it" in said
    typo = CliRunner().invoke(app, ["add", str(write(tmp_path / "t.jsonl", '{"instruction": "x", "ctx": "y"}\n')),
                                    "--input-key", "context"])
    assert typo.exit_code == 2 and "(a typo?)" in typo.output
