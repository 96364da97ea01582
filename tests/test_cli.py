"""doctor, stats, config: what a user sees on the command line."""

from __future__ import annotations

import json

import pytest

from typer.testing import CliRunner

from gristmill.app.cli import app
from tests.conftest import write

runner = CliRunner()


def _database_with_one_instruction(tmp_path) -> None:
    """test.db (the default the tests' environment names) with one instruction: what the review app needs to open."""
    from gristmill.app.ingest import import_file
    from gristmill.db import open_store

    with open_store(tmp_path / "test.db") as store:
        import_file(store, write(tmp_path / "i.txt", "one\n"))


def test_doctor_tells_a_base_model_from_an_instruct_one(gemma_path, smollm_path, tmp_path, monkeypatch):
    monkeypatch.setenv("GRISTMILL_CACHE_DIR", str(tmp_path / "fresh-cache"))  # no fingerprint cached yet
    base = runner.invoke(app, ["doctor", "--model", str(gemma_path)])
    assert base.exit_code == 0, base.output
    assert "kind: base" in base.output and "chat template: none" in base.output
    assert "added: yes (gguf: tokenizer.ggml.add_bos_token = true)" in base.output
    assert "<start_of_turn>" in base.output  # control tokens noted as evidence, not as a verdict
    assert "fingerprint: not computed yet" in base.output and "instruction-tuned" not in base.output
    from gristmill.models.fingerprint import fingerprint
    fingerprint(gemma_path)  # what the first generate does; the doctor then shows the cached value
    assert "fingerprint: sha256:" in runner.invoke(app, ["doctor", "--model", str(gemma_path)]).output
    instruct = runner.invoke(app, ["doctor", "--model", str(smollm_path)])
    assert instruct.exit_code == 0
    assert "kind: instruction-tuned" in instruct.output and "general.finetune" in instruct.output
    assert "chat template: present, never used" in instruct.output
    assert "warning:" in instruct.output and "base model" in instruct.output


def test_doctor_reports_the_database(tmp_path, gemma_path):
    runner.invoke(app, ["add", str(write(tmp_path / "a.txt", "one\n"))])
    result = runner.invoke(app, ["doctor"])
    assert "integrity_check: ok" in result.output and "journal_mode: wal" in result.output
    from gristmill.db.migrations import migration_names
    assert f"schema: {migration_names()[-1]}" in result.output and "0 pending" in result.output



def test_doctor_warns_of_what_hand_edits_left_behind(tmp_path, gemma_path):
    import sqlite3

    runner.invoke(app, ["add", str(write(tmp_path / "a.txt", "one\ntwo\n"))])
    assert runner.invoke(app, ["generate", "--max-tokens", "2"]).exit_code == 0
    with sqlite3.connect(tmp_path / "test.db") as conn:  # as a user would, in the sqlite3 shell
        conn.execute("INSERT INTO reviews (generation_id, decision, reviewer, created_at) VALUES "
                     "(1, 'accept', 'ann', 't'), (2, 'accept', 'ann', 't')")
        conn.execute("UPDATE generations SET completion = NULL WHERE id = 1")
        conn.execute("DELETE FROM generations WHERE id = 2")
    conn.close()
    result = runner.invoke(app, ["doctor"])
    assert result.exit_code == 0, result.output  # warnings: the database works
    said = " ".join(result.output.split())
    assert "1 accepted record(s) with no text (no completion and no edit): no export can include them" in said
    assert "1 review row(s) name a generation that is gone" in said
    runner.invoke(app, ["add", str(write(tmp_path / "b.txt", "three\n"))])
    with sqlite3.connect(tmp_path / "test.db") as conn:  # a pending item whose instruction is then deleted
        conn.execute("INSERT INTO generations (instruction_id, run_id, sample_index, status, seed, created_at) "
                     "VALUES (3, 1, 0, 'pending', 1, 't')")
        conn.execute("DELETE FROM instructions WHERE id = 3")
    conn.close()
    result = runner.invoke(app, ["generate", "--max-tokens", "2"])  # it had said only `1 pending`, every time
    assert "1 pending item(s) cannot run: their instruction was deleted by hand" in " ".join(result.output.split())
    said = " ".join(runner.invoke(app, ["doctor"]).output.split())
    assert "1 pending generation(s) name an instruction that is gone" in said


def test_stats_json_and_db_option(tmp_path):
    other = tmp_path / "other.db"
    runner.invoke(app, ["--db", str(other), "add", str(write(tmp_path / "a.jsonl",
                                                             '{"instruction": "x", "type": "math"}\n'))])
    result = runner.invoke(app, ["--db", str(other), "stats", "--json"])
    data = json.loads(result.output)
    assert data["instructions"]["total"] == 1 and data["types"] == {"math": 1}
    assert not (tmp_path / "test.db").exists()


def test_config_unknown_key_is_named_and_exit_2(tmp_path):
    write(tmp_path / "gristmill.toml", "[generate]\ntemperture = 0.5\n")
    result = runner.invoke(app, ["stats"])
    assert result.exit_code == 2 and "key 'generate.temperture': unknown" in result.output


def test_config_sets_generation_defaults(tmp_path, gemma_path):
    write(tmp_path / "gristmill.toml", '[generate]\nmax_tokens = 3\nstyle = "few-shot"\nseed = 9\n')
    runner.invoke(app, ["add", str(write(tmp_path / "a.txt", "Say hi.\n"))])
    result = runner.invoke(app, ["generate", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "style few-shot" in result.output and "seed 9" in result.output


def test_a_keymap_that_clashes_or_names_no_binding_is_exit_2_before_the_app_starts(tmp_path):
    """Textual would apply it as given: `accept = "r"` made r accept and reject unreachable."""
    _database_with_one_instruction(tmp_path)
    cases = [('accept = "r"', "keymap.accept: key 'r' is already 'reject' (Reject) in the review room"),
             ('quit = "a"', "keymap.quit: key 'a' is already 'accept' (Accept) in the review room"),
             ('acept = "y"', "keymap.acept: no binding has that id"),
             ('accept = " , "', "keymap.accept: no key given"),
             # these had passed: ctrl+q then quit (Textual's own binding) instead of accepting; no key sends notakey
             ('accept = "ctrl+q"', "keymap.accept: key 'ctrl+q' is already Textual's own 'quit'"),
             ('accept = "notakey"', "keymap.accept: 'notakey' is no key"),
             ('accept = "y,ctrl+banana"', "keymap.accept: 'ctrl+banana' is no key"),
             ("accept = 5", "key 'keymap.accept': expected keys as text")]
    for line, message in cases:
        write(tmp_path / "gristmill.toml", f"[keymap]\n{line}\n")
        result = runner.invoke(app, ["review"])
        assert result.exit_code == 2 and message in " ".join(result.output.split()), (line, result.output)
    # good ones get as far as the terminal check: a new key, or a default key written back (the help screen's
    # own q and ? already shadow the app's quit and help there, by design)
    for good in ('accept = "y"\nreject = "n"', 'quit = "q"', 'help = "?"', 'close_help = "escape,q,question_mark"',
                 'accept = "f5,ctrl+y,shift+tab"', 'quit = "ctrl+q"', 'accept = "+"'):
        write(tmp_path / "gristmill.toml", f"[keymap]\n{good}\n")
        assert "needs a terminal" in runner.invoke(app, ["review"]).output, good
    write(tmp_path / "gristmill.toml", '[keymap]\naccept = "?"\n')  # Textual spells it question_mark
    assert "key '?' is already 'help'" in " ".join(runner.invoke(app, ["review"]).output.split())


def test_review_with_stderr_redirected_is_refused_it_would_draw_there_unseen(tmp_path):
    import os
    import pty
    import subprocess
    import sys

    _database_with_one_instruction(tmp_path)
    primary, secondary = pty.openpty()
    try:
        done = subprocess.run([sys.executable, "-m", "gristmill", "--db", str(tmp_path / "test.db"), "review"],
                              stdin=secondary, stdout=secondary, stderr=subprocess.PIPE, timeout=60)
    finally:
        os.close(secondary)
        os.close(primary)
    assert done.returncode == 2
    assert b"needs a terminal (stderr is not one)" in done.stderr


@pytest.mark.parametrize("signal_name", ["SIGINT", "SIGTERM"])
def test_sigint_to_the_review_app_quits_it_with_one_line_and_exit_130(tmp_path, signal_name):
    """`kill -INT` (the app itself reads Ctrl-C as a key) ended the app with exit 0 and no word; `kill` (SIGTERM)
    ended it on the spot, the terminal left in the app's mode."""
    import fcntl
    import os
    import pty
    import select
    import signal
    import struct
    import subprocess
    import sys
    import termios
    import time

    _database_with_one_instruction(tmp_path)
    primary, secondary = pty.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    process = subprocess.Popen([sys.executable, "-m", "gristmill", "--db", str(tmp_path / "test.db"), "review"],
                               stdin=secondary, stdout=secondary, stderr=secondary, start_new_session=True)
    os.close(secondary)
    shown = b""

    def read_for(seconds: float, until: bytes | None = None) -> None:
        nonlocal shown
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not (until and until in shown):
            if select.select([primary], [], [], 0.2)[0]:
                try:
                    shown += os.read(primary, 65536)
                except OSError:  # the other end closed: the process is gone
                    return

    try:
        read_for(60, until=b"to review")  # the app has drawn its header
        assert process.poll() is None, shown[-2000:]
        process.send_signal(getattr(signal, signal_name))
        assert process.wait(timeout=30) == (143 if signal_name == "SIGTERM" else 130), shown[-2000:]
        read_for(2)
    finally:
        if process.poll() is None:
            process.kill()
        os.close(primary)
    assert b"interrupted: every decision made is saved" in shown


def test_sigterm_stops_generate_as_ctrl_c_does_saying_what_was_kept(tmp_path):
    """A SIGTERM (kill, a scheduler, a container stopping) ended the process on the spot, saying nothing."""
    import signal
    import subprocess
    import sys
    import time

    from gristmill.app.ingest import import_file
    from gristmill.db import open_store

    with open_store(tmp_path / "test.db") as store:
        import_file(store, write(tmp_path / "i.txt", "".join(f"Write a long story number {n}.\n" for n in range(40))))
    process = subprocess.Popen([sys.executable, "-m", "gristmill", "--db", str(tmp_path / "test.db"), "generate",
                                "--max-tokens", "64", "--batch", "2"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            with open_store(tmp_path / "test.db") as store:
                if store.query("SELECT count(*) FROM generations WHERE status = 'done'")[0][0]:
                    break
            time.sleep(0.2)
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 143, out + err  # 128 + SIGTERM, as a shell reports it
    assert "interrupted: every finished item is saved" in err and "pending" in out


def test_review_on_a_dumb_terminal_is_refused_it_cannot_draw_there(tmp_path):
    """With TERM=dumb the app drew full-screen anyway: its escape codes came out as text."""
    import os
    import pty
    import subprocess
    import sys

    _database_with_one_instruction(tmp_path)
    primary, secondary = pty.openpty()
    try:
        done = subprocess.run([sys.executable, "-m", "gristmill", "--db", str(tmp_path / "test.db"), "review"],
                              stdin=secondary, stdout=secondary, stderr=secondary, timeout=60,
                              env={**os.environ, "TERM": "dumb"})
    finally:
        os.close(secondary)
    shown = b""
    try:
        while chunk := os.read(primary, 65536):  # what the process wrote, until the pty reports its end
            shown += chunk
    except OSError:
        pass
    finally:
        os.close(primary)
    assert done.returncode == 2 and b"TERM=dumb cannot draw the review app" in shown, shown[-500:]
