"""What a curator must be able to trust: exports are reproducible and consistent, the accepted pool never
leaks an item's own answer, and leak trimming cuts only where the next example starts.

Real SQLite files, the real CLI, and the real embedded GGUF for the few-shot pool.
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
from pathlib import Path

from typer.testing import CliRunner

from gristmill.app.cli import app
from gristmill.app.generate import RunSettings, open_run, run_generation
from gristmill.app.ingest import import_file
from gristmill.app.review import decide
from gristmill.db import exports as exports_db
from gristmill.db import open_store
from gristmill.models import GenerationParams
from gristmill.models.fake import FakeEngine
from tests.conftest import write

runner = CliRunner()
STYLE = """name = "curated"
template = "{examples}Instruction: {instruction}\\n{input_block}Response:"
example_format = "Instruction: {instruction}\\nResponse: {response}\\n\\n"
training_format = "### Q: {instruction}\\n{input_block}### A: {response}"
shots = [2, 2]
stop = ["\\n\\nInstruction:"]

[[examples]]
id = "builtin-colour"
instruction = "Name a colour."
response = "Blue."
"""


def generate(tmp_path: Path, instructions: list[str], engine, style: Path, **settings) -> Path:
    db = tmp_path / "test.db"
    with open_store(db) as store:
        import_file(store, write(tmp_path / "i.jsonl", "\n".join(json.dumps({"instruction": i}) for i in instructions)))
        run, style_, run_settings = open_run(store, engine, RunSettings(style=str(style), **settings))
        run_generation(store, engine, run, style_, run_settings)
    return db


def test_the_training_format_comes_from_the_run_not_the_style_file(tmp_path):
    style = write(tmp_path / "curated.toml", STYLE)
    db = generate(tmp_path, ["Name a fruit.", "Name a tree."], FakeEngine(replies=[" Apple.", " Oak."]), style,
                  params=GenerationParams(max_tokens=20))
    with open_store(db) as store:
        decide(store, 1, "accept", "ann")
        decide(store, 2, "accept", "ann", "An oak.")
    out = tmp_path / "a.jsonl"
    assert runner.invoke(app, ["--db", str(db), "export", str(out), "--format", "text"]).exit_code == 0
    first = out.read_bytes()
    assert json.loads(first.splitlines()[0])["text"] == "### Q: Name a fruit.\n### A: Apple."
    style.write_text(STYLE.replace("### Q:", "QUESTION:"))  # edited after the run: the run keeps its own
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.chdir(elsewhere)
    assert runner.invoke(app, ["--db", str(db), "export", str(out), "--format", "text"]).exit_code == 0
    assert out.read_bytes() == first
    style.unlink()
    for fmt in ("text", "native", "messages"):
        assert runner.invoke(app, ["--db", str(db), "export", str(out), "--format", fmt]).exit_code == 0
    assert json.loads(out.read_text().splitlines()[1])["messages"][1]["content"] == "An oak."


def test_a_run_from_before_stored_styles_whose_style_is_gone_fails_naming_the_run(tmp_path):
    style = write(tmp_path / "curated.toml", STYLE)
    db = generate(tmp_path, ["Name a fruit."], FakeEngine(replies=[" Apple."]), style,
                  params=GenerationParams(max_tokens=20))
    with open_store(db) as store:
        decide(store, 1, "accept", "ann")
    sqlite3.connect(db).execute("UPDATE runs SET style_definition = NULL").connection.commit()  # as before m004
    out = tmp_path / "a.jsonl"
    result = runner.invoke(app, ["--db", str(db), "export", str(out)])
    assert result.exit_code == 0  # the style's path still resolves: the fallback works
    style.unlink()
    result = runner.invoke(app, ["--db", str(db), "export", str(tmp_path / "b.jsonl")])
    assert result.exit_code == 1 and "run 1" in result.output and "curated.toml" in result.output
    assert not (tmp_path / "b.jsonl").exists()


def test_one_export_reads_one_snapshot_while_review_goes_on(tmp_path, monkeypatch):
    style = write(tmp_path / "curated.toml", STYLE)
    db = generate(tmp_path, [f"Instruction number {n}, about subject {n * 7}." for n in range(2500)], FakeEngine(),
                  style, params=GenerationParams(max_tokens=20))
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("INSERT INTO reviews (generation_id, decision, reviewer, created_at) "
                     "SELECT id, 'accept', 'ann', 't' FROM generations")
    pages = exports_db.accepted_pages

    def review_meanwhile(store, where, batch=1000):
        for number, page in enumerate(pages(store, where, batch)):
            yield page
            if number == 0:  # a reviewer rejects everything not yet exported, and accepts nothing new
                with conn:
                    conn.execute("INSERT INTO reviews (generation_id, decision, reviewer, created_at) "
                                 "SELECT id, 'reject', 'bob', 't' FROM generations WHERE id > 1000")

    monkeypatch.setattr(exports_db, "accepted_pages", review_meanwhile)
    out = tmp_path / "snap.jsonl"
    result = runner.invoke(app, ["--db", str(db), "export", str(out)])
    assert result.exit_code == 0, result.output
    assert len(out.read_text().splitlines()) == 2500  # the database as it was when the export began
    assert conn.execute("SELECT count(*) FROM generations WHERE decision = 'accept'").fetchone()[0] == 1000
    conn.close()


def test_output_files_get_umask_permissions_and_the_manifest_matches(tmp_path):
    style = write(tmp_path / "curated.toml", STYLE)
    db = generate(tmp_path, ["Name a fruit."], FakeEngine(replies=[" Apple."]), style,
                  params=GenerationParams(max_tokens=20))
    with open_store(db) as store:
        decide(store, 1, "accept", "ann")
    old = os.umask(0o027)
    try:
        out = tmp_path / "p.jsonl"
        assert runner.invoke(app, ["--db", str(db), "export", str(out)]).exit_code == 0
    finally:
        os.umask(old)
    manifest_path = tmp_path / "p.jsonl.manifest.json"
    assert stat.S_IMODE(out.stat().st_mode) == 0o640 and stat.S_IMODE(manifest_path.stat().st_mode) == 0o640
    import hashlib
    manifest = json.loads(manifest_path.read_text())
    assert manifest["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest() and manifest["records"] == 1


def test_the_accepted_pool_never_holds_the_items_own_instruction(tmp_path, gemma):
    """Real model. Run 1 answers two instructions; the first is accepted. Run 2 draws from the accepted pool."""
    style = write(tmp_path / "curated.toml", STYLE)
    params = GenerationParams(max_tokens=4, seed=3)
    db = generate(tmp_path, ["Name a fruit.", "Name a tree."], gemma, style, params=params)
    with open_store(db) as store:
        decide(store, 1, "accept", "ann", "Mango, the own answer.")
        run, style_, settings = open_run(store, gemma, RunSettings(style=str(style), params=params, pool="accepted"))
        assert run.id == 2
        run_generation(store, gemma, run, style_, settings)
        rows = {r["instruction_id"]: r for r in store.query(
            "SELECT instruction_id, prompt, style_meta FROM generations WHERE run_id = 2")}
    own, other = rows[1], rows[2]
    assert "Mango, the own answer." not in own["prompt"]
    assert json.loads(own["style_meta"])["examples"] == ["builtin-colour"]
    # the other item may draw it, and the draw names it, so it can be audited and reproduced
    assert "Mango, the own answer." in other["prompt"]
    assert sorted(json.loads(other["style_meta"])["examples"]) == ["accepted-1", "builtin-colour"]


def test_leak_trimming_in_the_pipeline_cuts_only_at_a_line_start(tmp_path):
    style = write(tmp_path / "curated.toml", STYLE)
    replies = [" Use it in an Example Sentence: the cat sat. Instruction: is part of the answer.",
               " Done.\nInstruction: the next example, which the stop missed"]
    db = generate(tmp_path, ["Use 'cat' in a sentence.", "Say done."], FakeEngine(replies=replies), style,
                  params=GenerationParams(max_tokens=200))
    with open_store(db) as store:
        rows = store.query("SELECT completion, flags FROM generations ORDER BY id")
    assert rows[0]["completion"] == replies[0] and "leaked" not in json.loads(rows[0]["flags"])
    assert rows[1]["completion"] == " Done." and "leaked" in json.loads(rows[1]["flags"])


def test_generate_counts_the_completions_it_trimmed_in_its_own_output(tmp_path, capsys):
    """A default rewrite is counted where the user looks: the summary had said only `2 done`."""
    from gristmill.app.cli_progress import summary

    style = write(tmp_path / "curated.toml", STYLE)
    replies = [" Done.\nInstruction: the next example, which the stop missed", " Fine."]
    db = generate(tmp_path, ["Say done.", "Say fine."], FakeEngine(replies=replies), style,
                  params=GenerationParams(max_tokens=200))
    with open_store(db) as store:
        summary(store, 1)
    said = " ".join(capsys.readouterr().out.split())
    assert "run 1: 2 done" in said and "1 trimmed where they ran into a next example their stops missed" in said
    assert "control token" not in said
    with open_store(db) as store:  # as the real engine marks a completion it cut at a sampled control token
        store.conn.execute("""UPDATE generations SET flags = '["control_token"]' WHERE id = 2""")
        summary(store, 1)
    assert "1 cut where the model sampled a control token" in " ".join(capsys.readouterr().out.split())
