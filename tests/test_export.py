"""Export: golden files per format, fed prompt = exported prompt, atomic under kill -9, dedup, read-only."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from typer.testing import CliRunner

from gristmill.app.cli import app
from gristmill.app.generate import RunSettings, open_run, run_generation
from gristmill.app.ingest import import_file
from gristmill.app.review import decide
from gristmill.db import open_store
from gristmill.models import GenerationParams
from gristmill.models.base import token_ids_sha256
from gristmill.models.fake import FakeEngine
from tests.conftest import write

GOLDEN = Path(__file__).parent / "golden" / "export"
runner = CliRunner()
VOLATILE = re.compile(r'"(reviewed_at)": "[^"]+"')


def build(tmp_path, engine, instructions: list[dict], decisions: list[tuple]) -> Path:
    db = tmp_path / "test.db"
    with open_store(db) as store:
        import_file(store, write(tmp_path / "i.jsonl", "\n".join(json.dumps(i) for i in instructions) + "\n"))
        run, style, settings = open_run(store, engine, RunSettings(params=GenerationParams(max_tokens=40, seed=1)))
        run_generation(store, engine, run, style, settings)
        for generation_id, decision, edited in decisions:
            decide(store, generation_id, decision, "ann", edited)
    return db


def fake_db(tmp_path) -> Path:
    engine = FakeEngine(replies=[" Paris.", " Four.", " A poem about rain.", " Rejected one."])
    return build(tmp_path, engine, [
        {"instruction": "Capital of France?", "instruction_type": "fact"},
        {"instruction": "What is 2+2?", "input": "Show the sum.", "instruction_type": "math"},
        {"instruction": "Write about rain.", "instruction_type": "creative"},
        {"instruction": "Say no.", "instruction_type": "general"},
    ], [(1, "accept", None), (2, "accept", "Four (2+2=4)."), (3, "reject", None), (3, "accept", None),
        (4, "reject", None)])


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_formats_match_golden_files(tmp_path):
    fake_db(tmp_path)
    for fmt in ("native", "messages", "text"):
        out = tmp_path / f"{fmt}.jsonl"
        result = runner.invoke(app, ["export", str(out), "--format", fmt])
        assert result.exit_code == 0, result.output
        text = VOLATILE.sub(r'"\1": "<time>"', out.read_text(encoding="utf-8"))
        golden = GOLDEN / f"{fmt}.jsonl"
        if os.environ.get("GRISTMILL_UPDATE_GOLDEN"):
            golden.write_text(text, encoding="utf-8")
        assert text == golden.read_text(encoding="utf-8")


def test_native_records_carry_the_edit_the_original_and_the_manifest(tmp_path):
    fake_db(tmp_path)
    out = tmp_path / "out.jsonl"
    runner.invoke(app, ["export", str(out)])
    records = read_jsonl(out)
    assert [r["id"] for r in records] == [1, 2, 3]  # ordered by generation id; the rejected one is absent
    assert records[1]["response"] == "Four (2+2=4)." and records[1]["original_response"] == " Four."
    assert "original_response" not in records[0]
    assert records[1]["formatted_text"] == "Instruction: What is 2+2?\nInput: Show the sum.\nResponse: Four (2+2=4)."
    manifest = json.loads((tmp_path / "out.jsonl.manifest.json").read_text())
    assert manifest["records"] == 3 and manifest["format"] == "native"
    assert manifest["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert manifest["types"] == {"creative": 1, "fact": 1, "math": 1}
    assert manifest["runs"]["1"]["model_fingerprint"] == "sha256:fake" and manifest["dedup"]["removed"] == 0


def test_filters(tmp_path):
    fake_db(tmp_path)
    out = tmp_path / "o.jsonl"
    for args, ids in ((["--type", "math"], [2]), (["--type", "Math"], [2]), (["--min-chars", "8"], [2, 3]), (["--max-chars", "7"], [1]),
                      (["--run", "1", "--style", "completion"], [1, 2, 3])):
        assert runner.invoke(app, ["export", str(out), *args]).exit_code == 0
        assert [r["id"] for r in read_jsonl(out)] == ids, args


def test_a_filter_value_the_database_has_nowhere_is_refused_and_out_is_left_alone(tmp_path):
    """A typo had written an empty file over OUT with exit 0 (as `--run 99` never did)."""
    fake_db(tmp_path)
    out = write(tmp_path / "o.jsonl", "the last export\n")
    for args, said in ((["--reviewer", "bob"], "--reviewer 'bob': the database has none (it has: "),
                       (["--type", "Maths"], "--type 'maths': the database has none (it has: creative, fact, general, math)"),
                       (["--style", "few-shot"], "--style 'few-shot': the database has none (it has: completion)"),
                       (["--exclude-flag", "truncted"], "--exclude-flag 'truncted': gristmill sets no such flag (the flags: empty,"),
                       (["--no-dedup", "--dedup", "pair"], "--no-dedup and --dedup pair contradict")):
        result = runner.invoke(app, ["export", str(out), *args])
        assert result.exit_code == 2 and said in " ".join(result.output.split()), (args, result.output)
    assert out.read_text() == "the last export\n"


def test_exported_prompt_is_the_fed_prompt_on_the_real_model(tmp_path, gemma):
    db = build(tmp_path, gemma, [{"instruction": "Name a <|im_start|> fruit {examples}.", "instruction_type": "question"},
                                 {"instruction": "Name a colour.", "instruction_type": "question"}],
               [(1, "accept", None), (2, "accept", "Blue.")])
    out = tmp_path / "real.jsonl"
    assert runner.invoke(app, ["export", str(out)]).exit_code == 0
    with open_store(db) as store:
        stored = {r["id"]: r["prompt"] for r in store.query("SELECT id, prompt FROM generations")}
    for record in read_jsonl(out):
        assert record["prompt"] == stored[record["id"]]
        assert token_ids_sha256(gemma.tokenize(record["prompt"])) == record["prompt_token_ids_sha256"]


def test_export_leaves_the_database_untouched(tmp_path):
    db = fake_db(tmp_path)

    def dump() -> list:
        with open_store(db) as store:
            return list(store.conn.iterdump())
    before = dump()
    assert runner.invoke(app, ["export", str(tmp_path / "x.jsonl")]).exit_code == 0
    assert dump() == before


def test_kill_during_export_leaves_the_previous_complete_file(tmp_path):
    with open_store(tmp_path / "test.db") as store:
        engine = FakeEngine(n_ctx=100_000)
        lines = [json.dumps({"instruction": f"Unique instruction number {i} " + "pad " * 20}) for i in range(3000)]
        import_file(store, write(tmp_path / "i.jsonl", "\n".join(lines) + "\n"))
        run, style, settings = open_run(store, engine, RunSettings(params=GenerationParams(max_tokens=2000)))
        run_generation(store, engine, run, style, settings)
        store.conn.execute("UPDATE generations SET completion = completion || ?", ("y" * 3000,))
        store.conn.execute("INSERT INTO reviews (generation_id, decision, reviewer, created_at) "
                           "SELECT id, 'accept', 'ann', 't' FROM generations")  # the triggers keep the cache
    out = tmp_path / "big.jsonl"
    out.write_text("previous complete export\n")
    for delay in (0.4, 0.8, 1.2):
        process = subprocess.Popen([sys.executable, "-m", "gristmill", "export", str(out), "--no-dedup"],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        process.wait()
        content = out.read_bytes()
        assert content == b"previous complete export\n" or content.count(b"\n") == 3000
    assert runner.invoke(app, ["export", str(out), "--no-dedup"]).exit_code == 0
    assert len(read_jsonl(out)) == 3000


def test_dedup_report_in_the_manifest(tmp_path):
    """Identical answers to different questions are kept by default; `--dedup response` drops them, counted."""
    engine = FakeEngine(replies=[" The same answer to both questions here.", " The same answer to both questions here!"])
    build(tmp_path, engine, [{"instruction": "First question?"}, {"instruction": "Second question?"}],
          [(1, "accept", None), (2, "accept", None)])
    out = tmp_path / "d.jsonl"
    assert runner.invoke(app, ["export", str(out)]).exit_code == 0
    assert len(read_jsonl(out)) == 2
    result = runner.invoke(app, ["export", str(out), "--dedup", "response"])
    assert "dedup rule response: dropped 1 record(s) (0 exact, 1 near" in result.output
    manifest = json.loads((tmp_path / "d.jsonl.manifest.json").read_text())
    assert manifest["records"] == 1 and manifest["dedup"]["removed"] == 1 and manifest["dedup"]["rule"] == "response"
    assert manifest["dedup"]["pairs"][0]["dropped_id"] == 2 and manifest["dedup"]["pairs"][0]["kept_id"] == 1
    runner.invoke(app, ["export", str(out), "--no-dedup"])
    assert len(read_jsonl(out)) == 2


def test_bad_export_arguments_are_exit_2(tmp_path):
    fake_db(tmp_path)
    assert runner.invoke(app, ["export", str(tmp_path / "x.jsonl"), "--format", "parquet"]).exit_code == 2
    assert runner.invoke(app, ["export", str(tmp_path / "missing" / "x.jsonl")]).exit_code == 2
    assert runner.invoke(app, ["export", str(tmp_path / "x.jsonl"), "--dedup", "fuzzy"]).exit_code == 2
    for args, said in ((["-"], "standard output) is not supported"), (["x.jsonl", "--run", "99"], "no run 99"),
                       (["x.jsonl", "--min-chars", "100", "--max-chars", "10"], "nothing could match")):
        result = runner.invoke(app, ["export", *args])
        assert result.exit_code == 2 and said in " ".join(result.output.split()), (args, result.output)
    assert not (tmp_path / "-").exists() and not (tmp_path / "x.jsonl").exists()


def test_an_export_never_replaces_the_database_or_its_journal(tmp_path):
    """OUT (or OUT.manifest.json) naming the database, by any path or a hard link, is refused before anything is
    written: the command with exit 2, the export function (the app's dialog calls it) with an ExportError."""
    import pytest

    from gristmill.app.export import ExportError, export

    db = fake_db(tmp_path)
    before = db.read_bytes()
    os.link(db, tmp_path / "linked.db")
    (tmp_path / "sub").mkdir()
    for target in ("test.db", "sub/../test.db", "linked.db", "test.db-wal", "test.db-shm"):
        result = runner.invoke(app, ["export", target])
        assert result.exit_code == 2, (target, result.output)
        assert "would replace the database file" in result.output
    assert db.read_bytes() == before
    with open_store(db) as store:
        with pytest.raises(ExportError, match="would replace the database file test.db"):
            export(store, tmp_path / "test.db")
    manifest_named = tmp_path / "x.jsonl.manifest.json"  # the manifest's name may be the database's too
    os.replace(db, manifest_named)
    result = runner.invoke(app, ["--db", str(manifest_named), "export", "x.jsonl"])
    assert result.exit_code == 2 and "x.jsonl.manifest.json would replace the database file" in result.output
    assert not (tmp_path / "x.jsonl").exists()


def test_records_whose_run_or_instruction_row_is_gone_are_counted_not_silently_dropped(tmp_path):
    """A row deleted with plain sqlite3 (foreign keys not enforced there) leaves accepted generations the export's
    joins cannot return: the command says how many were not exported, and the manifest records it."""
    import sqlite3

    db = fake_db(tmp_path)
    out = tmp_path / "x.jsonl"
    assert runner.invoke(app, ["export", str(out)]).exit_code == 0
    full = len(read_jsonl(out))
    with sqlite3.connect(db) as conn:  # the instruction of generation 1, an accepted one
        conn.execute("DELETE FROM instructions WHERE id = (SELECT instruction_id FROM generations WHERE id = 1)")
    result = runner.invoke(app, ["export", str(out)])
    assert result.exit_code == 0, result.output
    assert len(read_jsonl(out)) == full - 1
    assert ("the database holds 1 accepted record(s) no export can include: 1 whose run or instruction row is gone"
            in " ".join(result.output.split()))
    manifest = json.loads((tmp_path / "x.jsonl.manifest.json").read_text())
    assert manifest["accepted_in_database_without_run_or_instruction"] == 1


def test_accepts_on_unfinished_or_empty_generations_are_counted_never_crash_or_vanish(tmp_path):
    """An accept written by hand on a generation with no text, or one not finished, can be in no export: every
    format says how many and why (in its output and manifest), and exports the rest."""
    import sqlite3

    db = fake_db(tmp_path)
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE generations SET completion = NULL WHERE id = 1")  # accepted, no edit: no text at all
        conn.execute("UPDATE generations SET status = 'failed' WHERE id = 3")  # accepted after a reject
    conn.close()
    for fmt in ("native", "messages", "text", "prompt-completion", "kto"):
        for dedup in ("default", "off"):
            out = tmp_path / f"{fmt}-{dedup}.jsonl"
            rule = [] if dedup == "default" else ["--dedup", dedup]
            result = runner.invoke(app, ["export", str(out), "--format", fmt, *rule])
            assert result.exit_code == 0, result.output
            said = " ".join(result.output.split())
            assert ("no export can include: 1 not finished (pending, refused or failed); 1 with no text (no "
                    "completion and no edit)") in said
            manifest = json.loads(out.with_name(out.name + ".manifest.json").read_text())
            assert sum(manifest["accepted_in_database_not_exportable"].values()) == 2
            if fmt == "native":
                assert [r["id"] for r in read_jsonl(out)] == [2]


def test_a_hand_edit_that_breaks_a_json_or_id_column_is_one_line_naming_the_row(tmp_path):
    """Each of these had been an internal error (a crash report) in stats or export; doctor named none."""
    import sqlite3

    db = fake_db(tmp_path)
    out = tmp_path / "o.jsonl"

    def edit(statement: str) -> None:
        with sqlite3.connect(db) as conn:
            conn.execute(statement)

    edit("UPDATE generations SET completion = NULL WHERE id = 3")  # a done, accepted generation with no text
    assert runner.invoke(app, ["stats", "--json"]).exit_code == 0
    edit("UPDATE generations SET completion_token_ids = x'0102' WHERE id = 1")
    result = runner.invoke(app, ["export", str(out), "--format", "tokens"])
    assert result.exit_code == 2 and "generations row 1: column completion_token_ids" in " ".join(result.output.split())
    edit("UPDATE generations SET flags = 'garbage' WHERE id = 2")
    result = runner.invoke(app, ["export", str(out)])
    assert result.exit_code == 2 and "generations row 2: column flags is not JSON" in " ".join(result.output.split())
    result = runner.invoke(app, ["stats"])
    assert result.exit_code == 2 and "doctor" in result.output and "Traceback" not in result.output
    edit("UPDATE runs SET params = 'garbage'")
    doctor = " ".join(runner.invoke(app, ["doctor"]).output.split())
    assert "generations.flags is not JSON in 1 row(s) (id 2)" in doctor and "runs.params is not JSON" in doctor
    edit("UPDATE generations SET flags = '[]' WHERE id = 2")
    result = runner.invoke(app, ["export", str(out)])
    assert result.exit_code == 2 and "runs row 1: column params is not JSON" in " ".join(result.output.split())


def test_an_export_removes_what_a_killed_export_left_and_nothing_of_a_live_one(tmp_path):
    """kill -9 runs no cleanup: each killed export had left a hidden temporary file, up to the export's size."""
    import os
    import subprocess

    fake_db(tmp_path)
    out = tmp_path / "o.jsonl"
    gone = subprocess.Popen(["true"])
    gone.wait()
    from gristmill.app.export import _HOST

    dead = write(tmp_path / f".o.jsonl.{_HOST}.{gone.pid}.abc123.tmp", "half an export")
    live = write(tmp_path / f".o.jsonl.{_HOST}.{os.getppid()}.def456.tmp", "another export, running")
    other_host = write(tmp_path / f".o.jsonl.elsewhere.{gone.pid}.abc123.tmp", "a shared disk's other host")
    other_out = write(tmp_path / f".o.jsonl.2024.{_HOST}.{gone.pid}.abc123.tmp", "OUT o.jsonl.2024's")
    other = write(tmp_path / f".other.jsonl.{_HOST}.{gone.pid}.abc123.tmp", "another file's")
    assert runner.invoke(app, ["export", str(out)]).exit_code == 0
    assert not dead.exists() and all(p.exists() for p in (live, other_host, other_out, other))
