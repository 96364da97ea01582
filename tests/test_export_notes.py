"""What export says beyond its record count: filters' left-outs, answers cut short, control-token text; the
flags of an edited record are its edit's; the file splits into lines wherever it is read."""

from __future__ import annotations

import json
import os

import pytest
from typer.testing import CliRunner

from gristmill.app.cli import app
from gristmill.app.review import decide
from gristmill.db import open_store
from gristmill.models.fake import FakeEngine
from tests.test_export import build, read_jsonl

runner = CliRunner()
CUT = " A long answer that the model never got to finish, as it ran out of tokens"  # > 40: max_tokens in build
LONG_TOO = " Another answer that runs well past the token budget of this run, for sure"


def notes_db(tmp_path):
    engine = FakeEngine(replies=[CUT, " Fine.", " Says <|im_start|> plainly.", LONG_TOO, " Rejected."])
    return build(tmp_path, engine, [{"instruction": f"Question {n}?"} for n in range(1, 6)], [
        (1, "accept", None),  # cut short, accepted as it is
        (2, "accept", None),
        (3, "accept", None),  # control-token text in the answer
        (4, "accept", "Finished by hand."),  # cut short, then edited: the reviewer's text is whole
        (5, "reject", None),
    ])


def export(tmp_path, *args):
    out = tmp_path / "out.jsonl"
    result = runner.invoke(app, ["export", str(out), *args])
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "out.jsonl.manifest.json").read_text())
    return result.output, read_jsonl(out), manifest


def test_answers_cut_short_and_control_token_text_are_counted_and_listed_never_dropped(tmp_path):
    notes_db(tmp_path)
    output, records, manifest = export(tmp_path)
    assert [r["id"] for r in records] == [1, 2, 3, 4]
    assert "4 record(s) of 4 accepted" in output and "filters:" not in output
    assert "cut short: 1 accepted answer(s) end where --max-tokens stopped the model" in output
    assert "control-token text: the records of 1 generation(s) carry text such as <eos>" in output
    assert manifest["cut_short"] == [1] and manifest["control_token_text"] == [3]
    # --format tokens keeps such text plain: nothing to say there
    output, _, manifest = export(tmp_path, "--format", "tokens")
    assert manifest["control_token_text"] == [] and "control-token text" not in output
    assert manifest["cut_short"] == [1]


def test_an_edited_record_carries_its_edits_flags_and_exclude_flag_judges_the_edit(tmp_path):
    """A reviewer who finished a cut answer by hand made a whole one: `--exclude-flag truncated` had dropped it
    (the flags were the model's text's), throwing away the best data with the worst."""
    notes_db(tmp_path)
    _, records, _ = export(tmp_path)
    edited = records[3]
    assert edited["flags"] == [] and "truncated" in edited["original_flags"]
    assert "original_flags" not in records[0] and "truncated" in records[0]["flags"]

    output, records, manifest = export(tmp_path, "--exclude-flag", "truncated")
    assert [r["id"] for r in records] == [2, 3, 4]
    assert "3 record(s) of 4 accepted" in output and "filters: left out 1 accepted record(s)" in output
    assert manifest["left_out_by_filters"] == 1 and manifest["accepted_in_database"] == 4

    with open_store(tmp_path / "test.db") as store:  # an edit that shows a flag is left out by it
        decide(store, 2, "accept", "ann", "Edited to say <eos> in the text.")
    for fmt in ("native", "prompt-completion", "kto"):
        output, records, _ = export(tmp_path, "--format", fmt, "--exclude-flag", "control_token_text")
        kept = [r["id"] for r in records] if fmt == "native" else None
        if fmt == "native":
            assert kept == [1, 4] and "filters: left out 2 accepted record(s)" in output
        elif fmt == "kto":
            assert not any("<eos>" in r["completion"] or "<|im_start|>" in r["completion"] for r in records)
            assert sum(r["label"] for r in records) == 2  # accepts 1 and 4; the reject stays a reject
        else:
            assert len(records) == 2


def test_unicode_line_breaks_are_escaped_so_every_reader_splits_records_alike(tmp_path):
    """JSON allows U+2028, U+2029 and U+0085 raw; str.splitlines() takes each for a line end, and a pipeline
    that split the file with it read 20 lines for 12 records."""
    engine = FakeEngine(replies=[" one\u2028two", " three\u2029four\u0085five"])
    build(tmp_path, engine, [{"instruction": "Split\u2028me?"}, {"instruction": "And me?"}],
          [(1, "accept", None), (2, "accept", None)])
    for fmt in ("native", "text", "prompt-completion"):
        out = tmp_path / f"{fmt}.jsonl"
        assert runner.invoke(app, ["export", str(out), "--format", fmt]).exit_code == 0
        text = out.read_text(encoding="utf-8")
        assert len(text.splitlines()) == 2 and "\u2028" not in text and "\\u2028" in text
    records = read_jsonl(tmp_path / "native.jsonl")
    assert records[0]["instruction"] == "Split\u2028me?" and records[1]["response"] == " three\u2029four\u0085five"


def test_a_crash_as_the_data_file_is_renamed_never_leaves_it_beside_another_exports_manifest(tmp_path, monkeypatch):
    """The data file was renamed into place before its manifest was written: a kill between left new data
    beside the previous export's manifest (another format, another count)."""
    notes_db(tmp_path)
    out = tmp_path / "out.jsonl"
    assert runner.invoke(app, ["export", str(out)]).exit_code == 0
    before = out.read_bytes()
    real_replace = os.replace

    def killed_at_the_data_rename(src, dst):
        if str(dst) == str(out):
            raise KeyboardInterrupt  # as a kill at this instant: the new data never took the old one's place
        return real_replace(src, dst)

    monkeypatch.setattr("gristmill.app.export.os.replace", killed_at_the_data_rename)
    with pytest.raises(KeyboardInterrupt):
        from gristmill.app.export import export as run_export

        with open_store(tmp_path / "test.db") as store:
            run_export(store, out, fmt="text")
    assert out.read_bytes() == before  # the old data, whole
    assert not (tmp_path / "out.jsonl.manifest.json").exists()  # and no manifest that could describe other data
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_a_pick_cut_short_is_one_answer_however_many_pairs_it_makes(tmp_path):
    """dpo writes a pick once per sibling it beat: the cut-short count had said 2 for one answer."""
    from gristmill.app.generate import RunSettings, open_run, run_generation
    from gristmill.app.ingest import import_file
    from gristmill.app.review import pick_best
    from gristmill.models import GenerationParams
    from tests.conftest import write

    db = tmp_path / "test.db"
    with open_store(db) as store:
        import_file(store, write(tmp_path / "i.jsonl", '{"instruction": "Question?"}\n'))
        engine = FakeEngine(replies=[" Short one.", CUT, " Another short one."])
        run, style, settings = open_run(store, engine, RunSettings(samples=3, params=GenerationParams(max_tokens=40)))
        run_generation(store, engine, run, style, settings)
        assert pick_best(store, 1, 2, "ann").chosen == 2  # the cut one wins over both siblings
    output, records, manifest = export(tmp_path, "--format", "dpo")
    assert len(records) == 2 and manifest["cut_short"] == [2]
    assert "cut short: 1 accepted answer(s)" in output
    assert manifest["left_out_by_filters"] is None  # pairs, not accepted records: no such count
