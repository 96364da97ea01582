"""Generation on the real model: stored prompt = fed text, resume after kill -9, two writers, flags."""

from __future__ import annotations

import json
import random
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from gristmill.app.cli import app
from gristmill.app.flags import quality_flags, trim_leak
from gristmill.app.generate import RunSettings, open_run, run_generation
from gristmill.app.review import decide
from gristmill.db import open_store
from gristmill.models import GenerationParams
from gristmill.models.base import token_ids_sha256
from tests.conftest import write

runner = CliRunner()


def add_instructions(tmp_path, n: int, name: str = "items.jsonl") -> None:
    lines = [json.dumps({"instruction": f"Name thing number {i}.", "instruction_type": "question"}) for i in range(n)]
    result = runner.invoke(app, ["add", str(write(tmp_path / name, "\n".join(lines) + "\n"))])
    assert result.exit_code == 0, result.output


def gristmill(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "gristmill", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


BATCHES = pytest.mark.parametrize("batch", ["1", "4"])  # every contract holds one at a time and batched


@BATCHES
def test_stored_prompts_are_the_fed_text_on_the_real_model(tmp_path, gemma, store, batch):
    from gristmill.app.engines import open_concurrent
    runner.invoke(app, ["add", str(write(tmp_path / "a.jsonl",
                        '{"instruction": "Say <|im_start|> and {examples} literally", "input": "<start_of_turn>"}\n'
                        '{"instruction": "What is 2+2?", "instruction_type": "math"}\n'))])
    for style in ("completion", "few-shot", "urial"):
        settings = RunSettings(style=style, params=GenerationParams(max_tokens=8, temperature=0.7, seed=3))
        run, style_obj, settings = open_run(store, gemma, settings)
        concurrent = open_concurrent(gemma, int(batch))
        try:
            final = run_generation(store, gemma, run, style_obj, settings, concurrent=concurrent)
        finally:
            concurrent.close()
        assert final.done == 2
    rows = store.query("SELECT g.*, i.instruction FROM generations g JOIN instructions i ON i.id = g.instruction_id")
    assert len(rows) == 6
    for row in rows:
        ids = gemma.tokenize(row["prompt"])
        assert row["prompt_token_ids_sha256"] == token_ids_sha256(ids) and row["prompt_tokens"] == len(ids)
        assert row["instruction"] in row["prompt"]
        assert not any(gemma.is_control(i) for i in ids[1:])
        assert row["status"] == "done" and row["finish_reason"] in ("stop", "length", "eos")
        assert json.loads(row["timings"])["batch"] == int(batch)
    few_shot = [json.loads(r["style_meta"]) for r in rows if "examples" in json.loads(r["style_meta"])]
    assert len(few_shot) == 4 and all(len(m["examples"]) in (3, 4) for m in few_shot)


@BATCHES
def test_cli_generate_resumes_and_never_duplicates(tmp_path, gemma_path, batch):
    add_instructions(tmp_path, 4)
    first = runner.invoke(app, ["generate", "--max-tokens", "4", "--samples", "2", "--limit", "3", "--quiet",
                                "--batch", batch])
    assert first.exit_code == 0, first.output
    assert "3 done" in first.output and "5 pending" in first.output
    second = runner.invoke(app, ["generate", "--max-tokens", "4", "--samples", "2", "--quiet", "--batch", batch])
    assert second.exit_code == 0 and "8 done" in second.output and "run 1" in second.output
    add_instructions(tmp_path, 5, "more.jsonl")  # one new instruction joins the same run
    third = runner.invoke(app, ["generate", "--max-tokens", "4", "--samples", "2", "--quiet", "--batch", "2"])
    assert "10 done" in third.output and "0 pending" in third.output
    other = runner.invoke(app, ["generate", "--max-tokens", "4", "--temperature", "0.1", "--limit", "1", "--quiet"])
    assert "run 2" in other.output
    with open_store(tmp_path / "test.db") as store:
        run = store.query("SELECT params, settings, finished_at FROM runs WHERE id = 1")[0]
        assert json.loads(run["params"])["max_tokens"] == 4 and run["finished_at"]
        dupes = store.query("SELECT count(*) FROM generations GROUP BY run_id, instruction_id, sample_index HAVING count(*) > 1")
        assert dupes == []


def test_without_a_terminal_progress_is_log_lines_not_a_bar_shown_only_at_the_end(tmp_path, gemma_path):
    """Rich draws no live bar on a file or pipe: a run logged to a file showed nothing until it ended."""
    add_instructions(tmp_path, 2)
    result = runner.invoke(app, ["generate", "--max-tokens", "2"])  # no --quiet; the runner's streams are no tty
    assert result.exit_code == 0, result.output
    assert "2/2 (2 done, 0 refused, 0 failed)" in result.output and "━" not in result.output


def test_a_type_no_instruction_has_is_refused_before_a_run_is_made(tmp_path, gemma_path):
    add_instructions(tmp_path, 2)
    result = runner.invoke(app, ["generate", "--types", "question,nosuchtype", "--max-tokens", "2"])
    assert result.exit_code == 2
    assert "no instruction has type 'nosuchtype' (the database's types: question)" in " ".join(result.output.split())
    with open_store(tmp_path / "test.db") as store:
        assert store.query("SELECT count(*) FROM runs")[0][0] == 0


@BATCHES
def test_flash_attention_is_on_by_default_switchable_and_recorded(tmp_path, gemma_path, batch):
    """It changes outputs by float rounding, like the batch size: each generation says which it was made with."""
    add_instructions(tmp_path, 2)
    on = runner.invoke(app, ["generate", "--max-tokens", "2", "--limit", "1", "--quiet", "--batch", batch])
    off = runner.invoke(app, ["generate", "--max-tokens", "2", "--quiet", "--batch", batch, "--no-flash-attn"])
    assert on.exit_code == 0 and off.exit_code == 0, on.output + off.output
    assert "run 1" in off.output  # not part of the run's identity: the same run goes on
    with open_store(tmp_path / "test.db") as store:
        rows = store.query("SELECT timings FROM generations ORDER BY finished_at")
        engine = json.loads(store.query("SELECT settings FROM runs WHERE id = 1")[0]["settings"])["engine"]
    assert [json.loads(r["timings"])["flash_attn"] for r in rows] == [True, False] and engine["flash_attn"] is False


def test_flash_attention_setting_reaches_llama_cpp(gemma_path):
    """The batched engine copies these context parameters, so both paths run with what was asked."""
    import llama_cpp

    from gristmill.models import create_engine

    for asked, expected in ((True, llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED),
                            (False, llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED)):
        engine = create_engine("llama_cpp", model_path=gemma_path, n_ctx=256, flash_attn=asked)
        try:
            assert engine._llm.context_params.flash_attn_type == expected
        finally:
            engine.close()


def test_in_process_options_with_a_server_are_refused_not_ignored(tmp_path, gemma_path):
    add_instructions(tmp_path, 1)
    result = runner.invoke(app, ["generate", "--server", "http://127.0.0.1:9", "--tokenizer", str(gemma_path),
                                 "--batch", "4", "--no-flash-attn"])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert "--batch" in lines[0] and "--flash-attn" in lines[0] and "--server" in lines[0]


@BATCHES
def test_too_long_prompt_is_refused_with_the_numbers(tmp_path, gemma_path, batch):
    runner.invoke(app, ["add", str(write(tmp_path / "a.txt", "word " * 400 + "\nshort one\n"))])
    result = runner.invoke(app, ["generate", "--n-ctx", "256", "--max-tokens", "8", "--quiet", "--batch", batch])
    assert result.exit_code == 0 and "1 refused" in result.output
    with open_store(tmp_path / "test.db") as store:
        row = store.query("SELECT * FROM generations WHERE status = 'refused'")[0]
    assert "256" in row["error"] and str(row["prompt_tokens"]) in row["error"] and row["completion"] is None


@BATCHES
def test_kill_9_at_random_moments_then_resume_finishes_exactly_once(tmp_path, gemma_path, batch):
    add_instructions(tmp_path, 20)
    args = ("generate", "--max-tokens", "6", "--samples", "2", "--quiet", "--threads", "1", "--batch", batch)
    rng = random.Random(1)
    for _ in range(10):
        process = gristmill(*args)
        time.sleep(rng.uniform(0.2, 2.0))
        process.send_signal(signal.SIGKILL)
        process.wait()
    final = gristmill(*args)
    out, err = final.communicate(timeout=300)
    assert final.returncode == 0, err
    conn = sqlite3.connect(tmp_path / "test.db")
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    rows = conn.execute("SELECT instruction_id, sample_index, status FROM generations").fetchall()
    assert len(rows) == 40 and len(set((r[0], r[1]) for r in rows)) == 40
    assert {r[2] for r in rows} == {"done"}
    assert conn.execute("SELECT count(*) FROM runs").fetchone()[0] == 1


@pytest.mark.parametrize("batch", ["1", "4", "8"])  # 8: the sequences' draws run on worker threads
def test_ctrl_c_stops_cleanly_with_exit_130(tmp_path, gemma_path, batch):
    add_instructions(tmp_path, 30)
    process = gristmill("generate", "--max-tokens", "16", "--quiet", "--batch", batch)
    deadline = time.time() + 60
    while time.time() < deadline:
        time.sleep(0.3)
        done = sqlite3.connect(tmp_path / "test.db").execute(
            "SELECT count(*) FROM generations WHERE status = 'done'").fetchone()[0] if (tmp_path / "test.db").exists() else 0
        if done:
            break
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "interrupted" in err and "pending" in out


@BATCHES
def test_review_and_generation_write_at_once_without_lock_errors(tmp_path, gemma_path, batch):
    add_instructions(tmp_path, 25)
    process = gristmill("generate", "--max-tokens", "6", "--quiet", "--batch", batch)
    decided, errors = set(), []
    with open_store(tmp_path / "test.db") as store:
        while process.poll() is None:
            for row in store.query("SELECT id FROM generations WHERE status = 'done' AND decision IS NULL"):
                try:
                    decide(store, row["id"], "accept", "reviewer")
                    decided.add(row["id"])
                except sqlite3.OperationalError as error:
                    errors.append(str(error))
            time.sleep(0.01)
    out, err = process.communicate()
    assert process.returncode == 0 and "locked" not in err, err
    assert errors == [] and len(decided) >= 5


def test_engine_errors_mark_the_item_failed_and_the_run_goes_on(store, tmp_path):
    from gristmill.models.fake import FakeEngine
    runner.invoke(app, ["add", str(write(tmp_path / "a.txt", "fine one\nBOOM here\nfine two\n"))])
    engine = FakeEngine(fail_on="BOOM")
    run, style, settings = open_run(store, engine, RunSettings(params=GenerationParams(max_tokens=20)))
    final = run_generation(store, engine, run, style, settings)
    assert (final.done, final.failed) == (2, 1)
    assert "fake failure" in store.query("SELECT error FROM generations WHERE status = 'failed'")[0][0]
    engine.fail_on = None
    again = run_generation(store, engine, run, style, settings, retry_failed=True)
    assert (again.done, again.failed) == (3, 0)


@pytest.mark.parametrize("text, finish, expected", [
    ("   ", "eos", ["empty"]),
    ("fine answer", "length", ["truncated"]),
    ("the cat sat " * 12, "eos", ["repetition"]),
    ("Here <|im_end|> there", "eos", ["control_token_text"]),
    ("bell \x07 and \x1b[31m", "eos", ["non_printable"]),
    ("A clean answer.", "stop", []),
])
def test_quality_flags_on_planted_outputs(text, finish, expected):
    assert quality_flags(text, finish) == expected


def test_leak_past_the_answer_is_trimmed_and_flagged():
    """Only where the style's format starts the next example: at a line start, never mid-line."""
    text, leaked = trim_leak("Paris is the capital.\nInstruction: write a poem", ["\n\nInstruction:", "\n\n\n"])
    assert (text, leaked) == ("Paris is the capital.", True)
    assert "leaked" in quality_flags(text, "stop", leaked=True)
    assert trim_leak("Plan A: go.", ["\nA:"]) == ("Plan A: go.", False)
    mid_line = ("Paris is the capital. Instruction: write a poem", "Use it in an Example Sentence: the cat sat.",
                "Step 2.\tInstruction: mix well.", "Answer:  Q: is this a question? Yes.")
    for text in mid_line:
        assert trim_leak(text, ["\nInstruction:", "\nSentence:", "\nQ:", "\n\n\n"]) == (text, False)
    assert trim_leak("One.\nTwo Sentence: ok.\nSentence: next", ["\nSentence:"]) == ("One.\nTwo Sentence: ok.", True)


def test_the_progress_bar_leaves_room_for_the_terminals_echo_of_ctrl_c():
    """A terminal echoes Ctrl-C as `^C` after the bar: on a full-width line that wrapped, and the bar's last draw
    landed on a new line under a stale copy of itself."""
    import io

    from rich.console import Console
    from rich.progress import BarColumn, TextColumn

    from gristmill.app.cli_progress import _Bar

    console = Console(file=io.StringIO(), width=60, force_terminal=True, color_system=None)
    with _Bar(TextColumn("generating"), BarColumn(bar_width=None), TextColumn("x" * 20), console=console) as bar:
        bar.add_task("t", total=10)
        lines = console.render_lines(bar.get_renderable(), console.options, pad=False)
    assert [sum(len(segment.text) for segment in line) for line in lines] == [58]


def test_a_terminal_too_narrow_for_the_bar_gets_log_lines(monkeypatch):
    """At 40 columns the bar's columns were cut to `generat… - tok… ET… refused 0 failed…`."""
    import io

    from rich.console import Console

    from gristmill.app import cli_progress

    for width, lines in ((40, True), (100, False)):
        console = Console(file=io.StringIO(), force_terminal=True, width=width)
        monkeypatch.setattr(cli_progress, "err", console)
        assert cli_progress._lines_not_a_bar(quiet=False) is lines


def test_types_given_twice_select_both(tmp_path, gemma_path):
    """`--types a --types b` had kept only b, and quietly started a run of b alone."""
    write(tmp_path / "t.jsonl", '{"instruction": "Why?", "type": "question"}\n{"instruction": "2+2", "type": "math"}\n'
                                '{"instruction": "A poem", "type": "creative"}\n')
    assert runner.invoke(app, ["add", str(tmp_path / "t.jsonl")]).exit_code == 0
    result = runner.invoke(app, ["generate", "--types", "question", "--types", "math", "--max-tokens", "1", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "2 done, 0 refused, 0 failed, 0 pending" in result.output
