"""Runs resume what the user means: canonical identity, claims, --retry-refused, --run N, old databases."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

from typer.testing import CliRunner

from gristmill.app.cli import app
from gristmill.app.generate import (
    RunSettings,
    legacy_config_hash,
    open_run,
    run_generation,
    style_fingerprint,
)
from gristmill.app.ingest import import_file
from gristmill.app.prompts import load_style, style_to_json
from gristmill.db import generations as generations_db
from gristmill.db import open_store
from gristmill.db import runs as runs_db
from gristmill.models import GenerationParams
from gristmill.models.fake import FakeEngine
from tests.conftest import write

runner = CliRunner()
STYLE = 'name = "mine"\ntemplate = "Task: {instruction}\\nAnswer:"\nstop = ["\\nTask:"]\n'


def add(store, tmp_path, n: int, types=("question",)) -> None:
    lines = [json.dumps({"instruction": f"Thing {i}", "instruction_type": types[i % len(types)]}) for i in range(n)]
    assert import_file(store, write(tmp_path / f"i{n}.jsonl", "\n".join(lines) + "\n")).ok


def test_identity_ignores_spelling_order_paths_and_engine_settings(store, tmp_path):
    add(store, tmp_path, 4, types=("question", "math"))
    write(tmp_path / "s.toml", STYLE)
    base = RunSettings(style="s.toml", params=GenerationParams(temperature=1.0, stop=("x", "y")),
                       types=("math", "question"))
    first, _, _ = open_run(store, FakeEngine(n_ctx=512), base, engine_settings={"n_ctx": 512, "threads": 1})
    variants = [
        replace(base, params=replace(base.params, temperature=1)),  # an int from TOML
        replace(base, params=replace(base.params, stop=("y", "x"))),
        replace(base, types=("question", "math")),
        replace(base, style="./s.toml"),
        replace(base, style=str(tmp_path / "s.toml")),
    ]
    for settings in variants:
        run, _, _ = open_run(store, FakeEngine(n_ctx=2048), settings, engine_settings={"n_ctx": 2048, "threads": 2})
        assert run.id == first.id, settings
    assert runs_db.get(store, first.id).settings["engine"] == {"n_ctx": 2048, "threads": 2}  # recorded, last used
    different, _, _ = open_run(store, FakeEngine(), replace(base, params=replace(base.params, temperature=0.5)))
    assert different.id != first.id
    write(tmp_path / "s.toml", STYLE.replace("Answer:", "Reply:"))  # same path, new content: a new run
    changed, _, _ = open_run(store, FakeEngine(), base)
    assert changed.id not in (first.id, different.id)


def test_toml_temperature_1_and_cli_temperature_1_0_are_one_run(tmp_path, gemma_path):
    write(tmp_path / "a.txt", "one\ntwo\n")
    assert runner.invoke(app, ["add", str(tmp_path / "a.txt")]).exit_code == 0
    write(tmp_path / "gristmill.toml", "[generate]\ntemperature = 1\nmax_tokens = 2\n")
    first = runner.invoke(app, ["generate", "--limit", "1", "--quiet", "--stop", "b", "--stop", "a"])
    assert first.exit_code == 0, first.output
    second = runner.invoke(app, ["generate", "--quiet", "--temperature", "1.0", "--stop", "a", "--stop", "b",
                                 "--n-ctx", "512", "--threads", "1"])
    assert second.exit_code == 0, second.output
    assert "run 1:" in second.output and "2 done" in second.output
    with open_store(tmp_path / "test.db") as store:
        assert store.query("SELECT count(*) FROM runs")[0][0] == 1


def test_claims_never_hand_one_item_to_two_owners_and_lapse_with_their_process(store, tmp_path):
    add(store, tmp_path, 6)
    run, _, _ = open_run(store, FakeEngine(), RunSettings())
    a = generations_db.claim(store, run.id, generations_db.new_owner(), limit=4)
    b = generations_db.claim(store, run.id, generations_db.new_owner(), limit=4)
    assert len(a) == 4 and len(b) == 2
    assert not {i.generation_id for i in a} & {i.generation_id for i in b}
    # a process that is gone (a pid that cannot exist) gives its claims up at once
    dead = "{}:999999999:x".format(generations_db.new_owner().split(":")[0])
    with store.write() as conn:
        conn.execute("UPDATE claims SET owner = ? WHERE generation_id = ?", (dead, a[0].generation_id))
    again = generations_db.claim(store, run.id, generations_db.new_owner(), limit=10)
    assert [i.generation_id for i in again] == [a[0].generation_id]
    # an expired lease lapses too
    generations_db.release(store, "nobody")
    c = generations_db.claim(store, run.id, "elsewhere:1:x", limit=10, lease_s=-1)
    assert c == []  # everything is held
    generations_db.release(store, again and store.query("SELECT owner FROM claims LIMIT 1")[0][0])


def test_generation_skips_items_another_process_holds(store, tmp_path):
    add(store, tmp_path, 5)
    engine = FakeEngine()
    run, style, settings = open_run(store, engine, RunSettings())
    held = generations_db.claim(store, run.id, "otherhost:1:x", limit=2)  # another machine, lease running
    final = run_generation(store, engine, run, style, settings)
    assert final.processed == 3
    statuses = dict(store.query("SELECT id, status FROM generations"))
    assert all(statuses[i.generation_id] == "pending" for i in held)
    assert store.query("SELECT count(*) FROM claims WHERE owner != 'otherhost:1:x'")[0][0] == 0


def test_the_summary_says_which_pending_items_another_process_is_generating(store, tmp_path, capsys):
    """A second generate on a small run found every item claimed and said "16 pending", exit 0: the work looked
    dropped. A process that is gone holds nothing, so it is not named."""
    from gristmill.app.cli_progress import summary

    add(store, tmp_path, 5)
    run, style, settings = open_run(store, FakeEngine(), RunSettings())
    host = generations_db.new_owner().split(":")[0]
    generations_db.claim(store, run.id, "otherhost:41:x", limit=2)  # another machine, lease running
    generations_db.claim(store, run.id, f"{host}:999999999:y", limit=2)  # this machine, process gone
    summary(store, run.id)
    said = " ".join(capsys.readouterr().out.split())
    assert "5 pending" in said
    assert "2 item(s) held by another process generating this run now: otherhost:41 (2)" in said


def test_two_generate_processes_on_one_new_run_share_the_work(tmp_path, gemma_path):
    lines = [json.dumps({"instruction": f"Name a colour, number {i}."}) for i in range(16)]
    assert runner.invoke(app, ["add", str(write(tmp_path / "a.jsonl", "\n".join(lines) + "\n"))]).exit_code == 0
    args = [sys.executable, "-m", "gristmill", "generate", "--max-tokens", "4", "--quiet", "--threads", "1"]
    processes = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=600) for p in processes]
    by_process = 0
    for process, (out, err) in zip(processes, outputs, strict=True):
        assert process.returncode == 0 and "Traceback" not in err, err
        summary = [line for line in out.splitlines() if "pending" in line][-1]
        if "by this process" in summary:
            by_process += int(summary.split(" by this process")[0].rsplit(", ", 1)[1])
    assert by_process == 16  # every item generated exactly once between them
    with open_store(tmp_path / "test.db") as store:
        assert store.query("SELECT count(*) FROM runs")[0][0] == 1
        assert store.query("SELECT count(*), sum(status = 'done') FROM generations")[0][:] == (16, 16)
        assert store.query("SELECT count(*) FROM claims")[0][0] == 0


def test_retry_refused_uses_the_larger_context_in_the_same_run(store, tmp_path):
    write(tmp_path / "a.txt", "short\n" + "long " * 60 + "\n")
    assert import_file(store, tmp_path / "a.txt").ok
    settings = RunSettings(params=GenerationParams(max_tokens=20))
    run, style, settings = open_run(store, FakeEngine(n_ctx=120), settings)
    first = run_generation(store, FakeEngine(n_ctx=120), run, style, settings)
    assert (first.done, first.refused) == (1, 1)
    assert store.query("SELECT refusal FROM generations WHERE status = 'refused'")[0][0] == "length"
    bigger = FakeEngine(n_ctx=4096)
    same, style, settings = open_run(store, bigger, RunSettings(params=GenerationParams(max_tokens=20)))
    assert same.id == run.id
    assert run_generation(store, bigger, same, style, settings).processed == 0  # not without the flag
    again = run_generation(store, bigger, same, style, settings, retry_refused=True)
    assert (again.done, again.refused, again.processed) == (2, 0, 1)


def test_cli_refusal_points_to_retry_refused_not_a_new_run(tmp_path, gemma_path, capsys):
    from gristmill.app.cli_progress import summary

    runner.invoke(app, ["add", str(write(tmp_path / "a.txt", "word " * 400 + "\nshort one\n"))])
    result = runner.invoke(app, ["generate", "--n-ctx", "256", "--max-tokens", "8", "--quiet"])
    assert result.exit_code == 0 and "1 refused" in result.output and "--retry-refused" in result.output
    assert "give a larger --n-ctx and run with --retry-refused" in " ".join(result.output.split())
    with open_store(tmp_path / "test.db") as store:  # a remote run's context is the server's: --n-ctx is refused
        store.conn.execute("UPDATE runs SET engine = 'remote'")
        summary(store, 1)
    assert "give the server a larger context" in " ".join(capsys.readouterr().out.split())
    again = runner.invoke(app, ["generate", "--n-ctx", "1024", "--max-tokens", "8", "--quiet", "--retry-refused"])
    assert again.exit_code == 0, again.output
    assert "run 1:" in again.output and "2 done, 0 refused" in again.output


def first_run_from_a_style_file(tmp_path) -> None:
    """Run 1: one of two instructions, generated with the style file s.toml."""
    write(tmp_path / "a.txt", "one\ntwo\n")
    runner.invoke(app, ["add", str(tmp_path / "a.txt")])
    write(tmp_path / "s.toml", STYLE)
    first = runner.invoke(app, ["generate", "--style", "s.toml", "--max-tokens", "2", "--limit", "1", "--quiet"])
    assert first.exit_code == 0, first.output


def test_run_n_keeps_its_stored_style_and_says_the_file_changed(tmp_path, gemma_path):
    first_run_from_a_style_file(tmp_path)
    write(tmp_path / "s.toml", STYLE.replace("Answer:", "Reply:"))
    second = runner.invoke(app, ["generate", "--run", "1", "--quiet"])
    assert second.exit_code == 0, second.output
    assert "has changed since run 1 started" in second.output
    with open_store(tmp_path / "test.db") as store:
        prompts = [r[0] for r in store.query("SELECT prompt FROM generations WHERE run_id = 1 ORDER BY id")]
    assert len(prompts) == 2 and all(p.endswith("Answer:") for p in prompts)  # one style in one run


def test_run_n_feeds_bos_by_the_runs_own_rule(tmp_path, gemma_path):
    write(tmp_path / "a.txt", "one\ntwo\n")
    runner.invoke(app, ["add", str(tmp_path / "a.txt")])
    first = runner.invoke(app, ["generate", "--no-add-bos", "--max-tokens", "2", "--limit", "1", "--quiet"])
    assert first.exit_code == 0, first.output
    second = runner.invoke(app, ["generate", "--run", "1", "--quiet"])  # gemma's GGUF says add BOS
    assert second.exit_code == 0, second.output
    with open_store(tmp_path / "test.db") as store:
        counts = [r[0] for r in store.query("SELECT prompt_tokens FROM generations ORDER BY id")]
        rows = store.query("SELECT prompt FROM generations ORDER BY id")
    from gristmill.models import create_engine
    engine = create_engine("llama_cpp", model_path=gemma_path, vocab_only=True, add_bos=False)
    try:
        assert counts == [len(engine.tokenize(r[0])) for r in rows]  # both without BOS
    finally:
        engine.close()
    clash = runner.invoke(app, ["generate", "--run", "1", "--add-bos", "--quiet"])
    assert clash.exit_code == 2 and "--no-add-bos" in clash.output


def test_run_n_refuses_style_and_sampling_options_that_differ_from_the_runs_own(tmp_path, gemma_path):
    """`--run N` generates with the run's own settings: an option typed with another value would be silently
    ignored, so it is refused naming both values; the same value (in any spelling) is fine."""
    write(tmp_path / "a.txt", "one\ntwo\n")
    runner.invoke(app, ["add", str(tmp_path / "a.txt")])
    first = runner.invoke(app, ["generate", "--max-tokens", "2", "--samples", "2", "--limit", "1", "--quiet"])
    assert first.exit_code == 0, first.output
    clash = runner.invoke(app, ["generate", "--run", "1", "--style", "few-shot", "--samples", "1", "--temperature",
                                "0", "--stop", "x", "--quiet"])
    assert clash.exit_code == 2, clash.output
    message = " ".join(clash.output.split())
    for part in ("--style few-shot (the run's: completion)", "--samples 1 (the run's: 2)",
                 "--temperature 0.0 (the run's: 0.7)", "--stop 'x' (the run's: none)"):
        assert part in message
    with open_store(tmp_path / "test.db") as store:
        assert store.query("SELECT count(*) FROM generations WHERE status = 'done'")[0][0] == 1  # nothing generated
    same = runner.invoke(app, ["generate", "--run", "1", "--max-tokens", "2", "--samples", "2", "--temperature", "0.70",
                               "--style", "completion", "--quiet"])
    assert same.exit_code == 0, same.output


def test_run_n_takes_its_style_file_by_any_path(tmp_path, gemma_path):
    first_run_from_a_style_file(tmp_path)
    for spelling in ("./s.toml", str(tmp_path / "s.toml")):
        again = runner.invoke(app, ["generate", "--run", "1", "--style", spelling, "--max-tokens", "2", "--quiet"])
        assert again.exit_code == 0, (spelling, again.output)
    write(tmp_path / "t.toml", STYLE.replace("Answer:", "Reply:"))
    other = runner.invoke(app, ["generate", "--run", "1", "--style", "t.toml", "--quiet"])
    assert other.exit_code == 2 and "--style t.toml (the run's: s.toml)" in " ".join(other.output.split())


def test_run_n_from_another_directory_takes_its_style_file_as_given_there(tmp_path, gemma_path, monkeypatch):
    """The run recorded `styles/s.toml`, relative to where it began. From inside `styles/` the same file is
    `s.toml`: that is the run's style, and nothing is said of it (it had been told the file "no longer loads")."""
    write(tmp_path / "a.txt", "one\ntwo\n")
    runner.invoke(app, ["add", str(tmp_path / "a.txt")])
    (tmp_path / "styles").mkdir()
    write(tmp_path / "styles" / "s.toml", STYLE)
    first = runner.invoke(app, ["generate", "--style", "styles/s.toml", "--max-tokens", "2", "--limit", "1",
                                "--quiet"])
    assert first.exit_code == 0, first.output
    monkeypatch.chdir(tmp_path / "styles")
    again = runner.invoke(app, ["generate", "--run", "1", "--style", "s.toml", "--max-tokens", "2", "--quiet"])
    assert again.exit_code == 0, again.output
    assert "note:" not in again.output and "does not load" not in again.output
    bare = runner.invoke(app, ["generate", "--run", "1", "--max-tokens", "2", "--quiet"])  # the recorded path
    assert "style file styles/s.toml does not load from " in " ".join(bare.output.split())


def test_a_run_from_before_m006_keeps_resuming(tmp_path):
    path = tmp_path / "old.db"
    engine = FakeEngine()
    settings = RunSettings(params=GenerationParams(max_tokens=8))
    style = load_style("completion")
    with open_store(path, stop_before="m006_claims_and_run_identity") as old:
        add(old, tmp_path, 3)
        with old.write() as conn:  # what open_run wrote before m006: the old hash, no identity column
            conn.execute(
                "INSERT INTO runs (engine, model, model_fingerprint, style, params, seed, samples, settings,"
                " config_hash, version, started_at, style_definition) VALUES ('fake', 'fake', 'sha256:fake',"
                " 'completion', ?, 0, 1, ?, ?, '0.1.0', 't', ?)",
                (json.dumps({**settings.params.to_dict(), "add_bos": False, "n_ctx": 4096}),
                 json.dumps({**settings.to_dict(), "style_fingerprint": style_fingerprint(style)}),
                 legacy_config_hash(engine, style, settings), style_to_json(style)))
            conn.execute("INSERT INTO generations (instruction_id, run_id, sample_index, status, completion, seed,"
                         " created_at) VALUES (1, 1, 0, 'done', 'kept', 5, 't')")
    with open_store(path) as store:
        run, style_obj, settings = open_run(store, engine, settings)
        assert run.id == 1 and run.identity is not None
        final = run_generation(store, engine, run, style_obj, settings)
        assert (final.processed, final.done) == (2, 3)
        assert store.query("SELECT completion FROM generations WHERE id = 1")[0][0] == "kept"
        again, _, _ = open_run(store, engine, RunSettings(params=GenerationParams(max_tokens=8)))
        assert again.id == 1


def test_claims_taken_by_a_batch_outlive_the_end_of_the_queue(store, tmp_path):
    """Running out of work must not hand back items still being generated: another process would redo them."""
    write(tmp_path / "a.txt", "one\ntwo\nthree\n")
    assert import_file(store, tmp_path / "a.txt").ok
    run, _, _ = open_run(store, FakeEngine(), RunSettings())
    work = generations_db.claimed(store, run.id, "me:1:x", batch=2)
    taken = list(work)  # the whole queue taken, the generator exhausted; none of it finished yet
    assert len(taken) == 3
    assert store.query("SELECT count(*) FROM claims")[0][0] == 3
    assert generations_db.claim(store, run.id, "other:2:y", limit=5) == []
