"""The one error boundary: bad invocations as a new user types them, run as real `gristmill` processes.

Every case must end in exactly one line on stderr that names the thing, the documented exit code, and no
traceback on either stream; commands that only read must not create the database they were pointed at.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from gristmill.app.cli import app
from gristmill.app.generate import RunSettings
from gristmill.app.ingest import import_file
from gristmill.db import open_store
from gristmill.db import runs as runs_db
from tests.conftest import write

GRISTMILL = Path(sys.executable).parent / "gristmill"  # the installed entry point, not `python -m`
IS_ROOT = os.geteuid() == 0
runner = CliRunner()


@dataclass(frozen=True)
class Case:
    id: str
    args: list[str]
    code: int
    says: tuple[str, ...]  # every one of these is in the one stderr line ({name} placeholders filled in)
    env: dict[str, str] = field(default_factory=dict)
    setup: str | None = None  # a function below that prepares the workspace for this case
    not_created: str | None = None  # a path that must still not exist afterwards
    as_nobody: bool = False  # permission cases: root reads anything, so run those as an unprivileged user


def C(id: str, args: str | list[str], code: int, *says: str, **options) -> Case:
    return Case(id, args.split() if isinstance(args, str) else args, code, says, **options)


CASES = [
    # --db: not SQLite, a directory, unreadable, unwritable, on every command
    C("db-not-sqlite-stats", "--db {notdb} stats", 2, "notdb.db", "not a SQLite database"),
    C("db-not-sqlite-add", "--db {notdb} add {good}", 2, "notdb.db", "not a SQLite database"),
    C("db-not-sqlite-generate", "--db {notdb} generate", 2, "notdb.db", "not a SQLite database"),
    C("db-not-sqlite-export", "--db {notdb} export {out}", 2, "notdb.db", "not a SQLite database"),
    C("db-not-sqlite-review", "--db {notdb} review", 2, "notdb.db", "not a SQLite database"),
    C("db-not-sqlite-preview", "--db {notdb} preview --item 1", 2, "notdb.db", "not a SQLite database"),
    C("db-not-sqlite-doctor", "--db {notdb} doctor", 2, "notdb.db", "not a SQLite database"),
    # SQLite took a file shorter than its header for an empty database: `stats` wrote a database over it
    C("db-one-byte-stats", "--db {onebyte} stats", 2, "onebyte.db", "not a SQLite database (1 byte"),
    C("db-one-byte-add", "--db {onebyte} add {good}", 2, "onebyte.db", "not a SQLite database (1 byte"),
    C("db-empty-file-stats", "--db {emptydb} stats", 2, "emptydb.db", "an empty file, not a database"),
    C("db-foreign-sqlite-stats", "--db {foreign} stats", 2, "foreign.db", "not gristmill's"),
    C("db-directory-stats", "--db {dir} stats", 2, "adir", "is a directory"),
    C("db-directory-add", "--db {dir} add {good}", 2, "adir", "is a directory"),
    C("db-directory-doctor", "--db {dir} doctor", 2, "adir", "is a directory"),
    C("db-device", "--db /dev/null stats", 2, "/dev/null", "not a regular file"),
    C("db-empty-path", ["--db", "", "stats"], 2, "database", "is a directory"),
    C("db-unwritable-add", "--db {db} add {good}", 2, "test.db", "not writable", setup="db_unwritable"),
    C("db-unwritable-doctor", "--db {db} doctor", 2, "test.db", "not writable", setup="db_unwritable"),
    C("db-unreadable-stats", "--db {db} stats", 2, "test.db", "not readable", setup="db_unreadable",
      as_nobody=True),
    # read-only commands never create a database (or its directory) on a typo
    C("db-missing-stats", "--db {missing} stats", 2, "typo.db", "does not exist", not_created="{missing}"),
    C("db-missing-review", "--db {missing} review", 2, "typo.db", "does not exist", not_created="{missing}"),
    C("db-missing-export", "--db {missing} export {out}", 2, "typo.db", "does not exist", not_created="{missing}"),
    C("db-missing-preview", "--db {missing} preview --item 1", 2, "typo.db", "does not exist",
      not_created="{missing}"),
    C("db-missing-doctor", "--db {missing} doctor", 2, "typo.db", "does not exist", not_created="{missing}"),
    C("db-missing-generate", "--db {missing} generate", 2, "typo.db", "does not exist", not_created="{missing}"),
    C("db-missing-dir-add", "--db {nodir_db} add {good}", 2, "nodir", "does not exist", not_created="{nodir}"),
    C("env-db-nowhere", "stats", 2, "GRISTMILL_DB", "does not exist", env={"GRISTMILL_DB": "{missing}"},
      not_created="{missing}"),
    # --model: missing, a directory, not GGUF, truncated, empty
    C("model-missing-doctor", "doctor --model {ws}/nope.gguf", 2, "nope.gguf", "file not found"),
    C("model-missing-generate", "generate --model {ws}/nope.gguf", 2, "nope.gguf", "file not found"),
    C("model-directory-preview", "preview --model {dir} hello", 2, "adir", "is a directory"),
    C("model-not-gguf-generate", "generate --model {good}", 2, "good.jsonl", "not a GGUF file"),
    C("model-empty-doctor", "doctor --model {empty_gguf}", 2, "empty.gguf", "not a GGUF file"),
    C("model-truncated-doctor", "doctor --model {truncated}", 2, "truncated.gguf", "cannot load"),
    C("model-truncated-preview", "preview --model {truncated} hello", 2, "truncated.gguf", "cannot load"),
    C("model-truncated-generate", "generate --model {truncated}", 2, "truncated.gguf", "cannot load"),
    # export OUT
    C("export-out-directory", "export {dir}", 2, "adir", "is a directory"),
    C("export-out-dot", "export .", 2, "export: . is a directory"),  # had crashed: a path with no file name
    C("export-out-root", "export /", 2, "export: / is a directory"),
    C("export-out-no-directory", "export {ws}/nodir/x.jsonl", 2, "nodir", "does not exist"),
    C("export-read-only-directory", "export {rodir}/x.jsonl", 2, "rodir", "cannot write",
      setup="read_only_dir"),
    C("export-bad-format", "export {out} --format yaml", 2, "--format", "yaml"),
    # instruction files
    C("add-lone-surrogate", "add {surrogate}", 2, "surrogate.jsonl:1:", "not valid Unicode"),
    C("add-5000-digits-jsonl", "add {digits}", 2, "digits.jsonl:1:", "too many digits"),
    C("add-5000-digits-json", "add {digits_json}", 2, "digits.json:1:", "too many digits"),
    # Python's json reads these; the metadata column then held text json_extract rejects, or a value was lost
    C("add-nan-jsonl", "add {nan}", 2, "nan.jsonl:2:", "NaN is not a JSON value"),
    C("add-infinity-json", "add {inf_json}", 2, "inf.json:1:", "Infinity is not a JSON value"),
    C("add-duplicate-key-jsonl", "add {twice}", 2, "twice.jsonl:1:", "key 'instruction' appears twice"),
    C("add-duplicate-key-json", "add {twice_json}", 2, "twice.json:1:", "key 'instruction' appears twice"),
    C("add-deep-jsonl", "add {deep}", 2, "deep.jsonl:1:", "nested too deeply"),
    # a renamed key no record has had imported every record without its input (the value went into metadata)
    C("add-input-key-nowhere", "add {good} --input-key ctx", 2, "good.jsonl", "--input-key 'ctx': no record"),
    C("add-type-key-nowhere-csv", "add {nocol} --instruction-key prompt --type-key kind", 2, "nocol.csv",
      "--type-key 'kind': no record"),
    C("add-gzip", "add {gz}", 2, "gz.jsonl:1:", "a gzip-compressed file: decompress it first"),
    C("model-symlink-loop", "generate --model {loop}", 2, "loop.gguf", "a symbolic link to nothing"),
    C("config-bom", "stats", 2, "gristmill.toml", "byte-order mark", setup="config_bom"),
    C("config-wrong-type", "stats", 2, "generate.samples", "expected a whole number, got '2'",
      setup="config_wrong_type"),
    C("style-empty-name", ["generate", "--style", ""], 2, "no style named (an empty name)"),
    C("add-type-empty", ["add", "{good}", "--type", " "], 2, "--type ' ': give one type name"),
    C("add-type-comma", ["add", "{good}", "--type", "a,b"], 2, "--type 'a,b': give one type name"),
    C("add-type-field-comma", "add {comma_type}", 2, "commatype.jsonl:1:", "a type cannot contain ','"),
    C("add-deep-json", "add {deep_json}", 2, "deep.json:1:", "nested too deeply"),
    C("add-deep-metadata", "add {deep_meta}", 2, "deepmeta.jsonl:1:", "nested too deeply"),
    C("add-missing-file", "add {ws}/nothere.jsonl", 2, "nothere.jsonl: cannot read:", "no such file"),
    C("add-directory", "add {dir}", 2, "adir: cannot read:", "is a directory"),
    C("add-csv-no-instruction-column", "add {nocol}", 2, "nocol.csv:1:", "--instruction-key", "'prompt'"),
    C("add-semicolon-csv", "add {semicolons}", 2, "semi.csv:1:", "separated by ';'"),
    C("add-list-in-jsonl", "add {list_jsonl}", 2, "list.jsonl:1:", "belongs in a .json file"),
    C("add-lines-in-json", "add {lines_json}", 2, "lines.json:1:", "is a .jsonl file"),
    C("add-empty-jsonl", "add {empty_jsonl}", 2, "empty.jsonl:", "empty file"),
    C("add-empty-csv", "add {empty_csv}", 2, "empty.csv:", "empty file"),
    C("add-unsupported-type", "add {ws}/notes.yaml", 2, "notes.yaml", "unsupported file type"),
    # runs, configs and option values
    C("run-style-gone", "generate --run {run}", 2, "run", "gone-style.toml"),
    C("run-unknown", "generate --run 999", 2, "no run 999"),
    # each of these had been ignored: a local run with the server's options, run 1 continued, every type generated
    C("run-and-new-run", "generate --run 1 --new-run", 2, "--run N continues run N and --new-run"),
    C("server-options-without-server", "generate --tokenizer {model} --concurrency 2", 2,
      "--tokenizer, --concurrency are for --server"),
    C("local-options-with-server", "generate --server http://127.0.0.1:9 --tokenizer {model} --batch 2", 2,
      "--batch is for the in-process engine: with --server the server's own settings apply"),
    C("types-empty", ["generate", "--types", ",,"], 2, "--types ',,' names no type"),
    C("config-missing", "--config {ws}/nope.toml stats", 2, "nope.toml", "--config", "does not exist"),
    C("env-config-nowhere", "stats", 2, "GRISTMILL_CONFIG", "does not exist",
      env={"GRISTMILL_CONFIG": "{ws}/elsewhere/gristmill.toml"}),
    C("config-directory", "--config {dir} stats", 2, "adir", "cannot read"),
    C("config-bad-toml", "stats", 2, "gristmill.toml", "invalid TOML", setup="config_bad_toml"),
    C("config-samples-zero", "stats", 2, "generate.samples", "got 0", setup="config_samples_zero"),
    # unbounded, these had blamed the server for a timeout, or quietly meant one try
    C("config-negative-timeout", "stats", 2, "generate.request_timeout", "got -1", setup="config_negative_timeout"),
    C("config-zero-retries", "stats", 2, "generate.retries", "got 0", setup="config_zero_retries"),
    C("config-n-ctx-cap-zero", "stats", 2, "generate.n_ctx_cap", "got 0", setup="config_n_ctx_cap_zero"),
    C("config-negative-max-tokens", "generate", 2, "generate.max_tokens", "-5", setup="config_negative_max"),
    C("option-negative-max-tokens", "generate --max-tokens -1", 2, "--max-tokens"),
    C("option-nan-temperature", "generate --temperature nan", 2, "--temperature"),
    C("option-samples-letters", "generate --samples many", 2, "--samples", "integer"),
    C("option-empty-stop", ["generate", "--stop", ""], 2, "stop"),
    C("option-unknown", "stats --jsn", 2, "--jsn"),
    C("command-unknown", "stat", 2, "stat"),
    C("server-no-scheme", "generate --server 127.0.0.1:8731 --tokenizer {model}", 2, "expected http://HOST:PORT"),
    C("server-ftp", "generate --server ftp://x --tokenizer {model}", 2, "expected http://HOST:PORT"),
    # these had been runtime failures (exit 1): the command is what needs fixing
    C("server-port-out-of-range", "generate --server http://127.0.0.1:99999 --tokenizer {model}", 2,
      "the port must be a number from 0 to 65535"),
    C("server-tokenizer-not-json", "generate --server http://127.0.0.1:9 --tokenizer {badtok}", 2,
      "--tokenizer", "badtok.json", "not a tokenizer.json?"),
    C("server-tokenizer-truncated", "generate --server http://127.0.0.1:9 --tokenizer {truncated}", 2,
      "--tokenizer", "truncated.gguf", "a truncated or corrupt GGUF?"),
    C("server-credentials", "generate --server http://u:p@127.0.0.1:8731 --tokenizer {model}", 2,
      "credentials in the URL are not accepted"),
    C("preview-nothing", "preview", 2, "give an instruction"),
    C("preview-blank", ["preview", "   "], 2, "preview: the instruction is blank"),
    C("preview-item-with-type", "preview --item 1 --type math", 2, "--item ID renders the stored input and type"),
    C("preview-no-such-item", "preview --item 99", 2, "no instruction with id 99"),
    # the review app without a terminal
    C("review-no-terminal", "review", 2, "needs a terminal"),
    C("bare-no-terminal", [], 2, "needs a terminal"),
]


# --- the workspace every case runs in ----------------------------------------------------------------------

def _workspace(tmp_path: Path, gemma_path: Path) -> dict[str, str]:
    ws = tmp_path
    paths = {"ws": ws, "db": ws / "test.db", "missing": ws / "typo.db", "nodir": ws / "nodir",
             "nodir_db": ws / "nodir" / "x.db", "out": ws / "out.jsonl", "rodir": ws / "rodir"}
    paths["good"] = write(ws / "good.jsonl", '{"instruction": "Name a colour."}\n')
    paths["notdb"] = write(ws / "notdb.db", "this is not a database\n")
    paths["onebyte"] = write(ws / "onebyte.db", "x")
    paths["emptydb"] = write(ws / "emptydb.db", "")
    (ws / "adir").mkdir()
    paths["dir"] = ws / "adir"
    paths["empty_gguf"] = write(ws / "empty.gguf", b"")
    paths["model"] = gemma_path
    with gemma_path.open("rb") as model:
        paths["truncated"] = write(ws / "truncated.gguf", model.read(2_000_000))
    paths["surrogate"] = write(ws / "surrogate.jsonl", '{"instruction": "bad \\ud800 text"}\n')
    paths["digits"] = write(ws / "digits.jsonl", '{"instruction": "x", "n": ' + "7" * 5000 + "}\n")
    paths["nan"] = write(ws / "nan.jsonl", '{"instruction": "a"}\n{"instruction": "b", "x": NaN}\n')
    paths["inf_json"] = write(ws / "inf.json", '[{"instruction": "a", "x": -Infinity}]')
    import gzip
    import os

    paths["gz"] = write(ws / "gz.jsonl", gzip.compress(b'{"instruction": "a"}\n'))
    os.symlink(ws / "loop.gguf", ws / "loop.gguf")
    paths["loop"] = ws / "loop.gguf"
    paths["badtok"] = write(ws / "badtok.json", '{"x": 1')
    paths["comma_type"] = write(ws / "commatype.jsonl", '{"instruction": "a", "type": "qa,math"}\n')
    paths["twice"] = write(ws / "twice.jsonl", '{"instruction": "first", "instruction": "second"}\n')
    paths["twice_json"] = write(ws / "twice.json", '[{"instruction": "first", "instruction": "second"}]')
    paths["digits_json"] = write(ws / "digits.json", '[{"instruction": "x", "n": ' + "7" * 5000 + "}]")
    paths["deep"] = write(ws / "deep.jsonl", "[" * 100_000 + "]" * 100_000 + "\n")
    paths["deep_json"] = write(ws / "deep.json", "[" + "[" * 100_000 + "]" * 100_000 + "]")
    nested = {"instruction": "x", "meta": json.loads("[" * 300 + "]" * 300)}
    paths["deep_meta"] = write(ws / "deepmeta.jsonl", json.dumps(nested) + "\n")
    paths["nocol"] = write(ws / "nocol.csv", "prompt,answer\nhello,world\n")
    paths["semicolons"] = write(ws / "semi.csv", "instruction;input\nhello;x\n")
    paths["list_jsonl"] = write(ws / "list.jsonl", '[\n  {"instruction": "a"},\n  {"instruction": "b"}\n]\n')
    paths["lines_json"] = write(ws / "lines.json", '{"instruction": "a"}\n{"instruction": "b"}\n')
    paths["empty_jsonl"] = write(ws / "empty.jsonl", "")
    paths["empty_csv"] = write(ws / "empty.csv", "")
    write(ws / "notes.yaml", "instruction: x\n")
    foreign = sqlite3.connect(ws / "foreign.db")
    foreign.execute("CREATE TABLE moz_places (id INTEGER PRIMARY KEY, url TEXT)")
    foreign.commit()
    foreign.close()
    paths["foreign"] = ws / "foreign.db"
    with open_store(paths["db"]) as store:
        assert import_file(store, paths["good"]).ok
        settings = RunSettings(style=str(ws / "gone-style.toml")).to_dict()
        run = runs_db.create(store, engine="llama_cpp", model="m", model_fingerprint="sha256:0", style="gone",
                             params={}, seed=0, samples=1, settings=settings, config_hash="x", version="0",
                             style_definition=None)  # a run from before m004, its style file since deleted
        paths["run"] = run.id
    return {key: str(value) for key, value in paths.items()}


def db_unwritable(paths: dict[str, str]) -> None:
    _read_only(Path(paths["db"]))


def db_unreadable(paths: dict[str, str]) -> None:
    os.chmod(paths["db"], 0)


def read_only_dir(paths: dict[str, str]) -> None:
    Path(paths["rodir"]).mkdir()
    _read_only(Path(paths["rodir"]))


def _read_only(path: Path) -> None:
    """chmod is no obstacle to root: there the file is made immutable instead (and made mutable again after)."""
    if IS_ROOT:
        subprocess.run(["chattr", "+i", str(path)], check=True)
    else:
        path.chmod(0o555 if path.is_dir() else 0o444)


def config_bad_toml(paths: dict[str, str]) -> None:
    write(Path(paths["ws"]) / "gristmill.toml", "[generate\n")


def config_samples_zero(paths: dict[str, str]) -> None:
    write(Path(paths["ws"]) / "gristmill.toml", "[generate]\nsamples = 0\n")


def config_bom(paths: dict[str, str]) -> None:
    write(Path(paths["ws"]) / "gristmill.toml", b"\xef\xbb\xbf[generate]\nsamples = 2\n")


def config_wrong_type(paths: dict[str, str]) -> None:
    write(Path(paths["ws"]) / "gristmill.toml", '[generate]\nsamples = "2"\n')


def config_negative_timeout(paths: dict[str, str]) -> None:
    write(Path(paths["ws"]) / "gristmill.toml", "[generate]\nrequest_timeout = -1\n")


def config_zero_retries(paths: dict[str, str]) -> None:
    write(Path(paths["ws"]) / "gristmill.toml", "[generate]\nretries = 0\n")


def config_n_ctx_cap_zero(paths: dict[str, str]) -> None:
    write(Path(paths["ws"]) / "gristmill.toml", "[generate]\nn_ctx_cap = 0\n")


def config_negative_max(paths: dict[str, str]) -> None:
    write(Path(paths["ws"]) / "gristmill.toml", "[generate]\nmax_tokens = -5\n")


@pytest.fixture
def workspace(request, gemma_path):
    if request.node.callspec.params["case"].as_nobody and IS_ROOT:
        if not shutil.which("setpriv"):
            pytest.skip("running as root without setpriv: cannot make a file unreadable")
        base = Path(tempfile.mkdtemp(prefix="gristmill-nobody-"))  # pytest's tmp dirs are closed to others
        base.chmod(0o755)
        os.chdir(base)
        yield _workspace(base, gemma_path)
        shutil.rmtree(base, ignore_errors=True)
        return
    paths = _workspace(Path.cwd(), gemma_path)
    yield paths
    for name in ("db", "rodir"):
        if IS_ROOT and Path(paths[name]).exists():
            subprocess.run(["chattr", "-i", paths[name]], check=False)


def test_the_table_has_enough_cases():
    assert len(CASES) >= 30 and len({case.id for case in CASES}) == len(CASES)


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_invocation_ends_in_one_clear_line(case: Case, workspace: dict[str, str]):
    if case.setup:
        globals()[case.setup](workspace)
    args = [arg.format(**workspace) for arg in case.args]
    env = {**os.environ, **{k: v.format(**workspace) for k, v in case.env.items()}}
    command = [str(GRISTMILL), *args]
    if case.as_nobody and IS_ROOT:
        env["GRISTMILL_STATE_DIR"] = str(Path(workspace["ws"]) / "state")
        command = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *command]
    result = subprocess.run(command, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL,
                            timeout=120)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "Traceback" not in result.stdout and "Traceback" not in result.stderr, result.stderr
    assert result.returncode == case.code, (result.returncode, result.stderr)
    assert len(lines) == 1, result.stderr
    for fragment in case.says:
        assert fragment.format(**workspace).lower() in lines[0].lower(), lines[0]
    if case.not_created:
        assert not Path(case.not_created.format(**workspace)).exists()


# --- Ctrl-C and bugs -----------------------------------------------------------------------------------------

def test_a_bug_is_one_line_and_a_redacted_crash_report(tmp_path, monkeypatch, store):
    """A bug (here: a ZeroDivisionError planted in `stats`) never shows a traceback or a secret on the terminal."""
    monkeypatch.setenv("GRISTMILL_API_KEY", "key-abcdef123456")
    secret_prompt = "Write a poem about my bank password " * 4

    def broken(_store):
        raise ZeroDivisionError(f"boom with Bearer key-abcdef123456 and {secret_prompt!r}")

    monkeypatch.setattr("gristmill.db.stats.collect", broken)
    result = runner.invoke(app, ["stats"])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output
    assert "internal error" in lines[0] and "ZeroDivisionError" in lines[0] and "crash report:" in lines[0]
    assert "key-abcdef123456" not in result.output and "bank password" not in result.output
    report = Path(lines[0].split("crash report: ")[1])
    assert report.parent == tmp_path / "state"
    text = report.read_text()
    assert "Traceback" in text and "ZeroDivisionError" in text and "broken" in text
    assert "key-abcdef123456" not in text and "bank password" not in text


def test_a_bug_in_the_installed_entry_point_writes_a_report(tmp_path, store):
    code = ("import gristmill.db.stats as s\n"
            "def broken(store): raise KeyError('no such thing')\n"
            "s.collect = broken\n"
            "from gristmill.app.cli import main\nmain()\n")
    result = subprocess.run([sys.executable, "-c", code, "stats"], capture_output=True, text=True)
    assert result.returncode == 1 and "Traceback" not in result.stderr + result.stdout
    assert "KeyError" in result.stderr and "crash report:" in result.stderr
    assert len(list((tmp_path / "state").glob("crash-*.log"))) == 1


def test_ctrl_c_during_an_import_exits_130_and_imports_nothing(tmp_path, store):
    import signal
    import time

    big = tmp_path / "big.jsonl"
    with big.open("w") as handle:
        for i in range(600_000):
            handle.write(json.dumps({"instruction": f"Instruction number {i} " + "x" * 80}) + "\n")
    process = subprocess.Popen([str(GRISTMILL), "add", str(big)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    time.sleep(2.0)  # not a timed assertion: the import may or may not have finished; both are checked
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert "Traceback" not in out + err
    count = sqlite3.connect(tmp_path / "test.db").execute("SELECT count(*) FROM instructions").fetchone()[0]
    if process.returncode == 130:
        assert "interrupted: nothing from" in err and "big.jsonl" in err and count == 0
    else:
        assert process.returncode == 0 and count == 600_000


async def test_a_crash_inside_the_review_app_is_reported_not_printed(tmp_path, store):
    from gristmill.app.crash import _AlreadyReported, guard_app
    from gristmill.app.tui.app import make_app

    review_app = make_app(tmp_path / "test.db", reviewer="ann")
    failures = guard_app(review_app)

    def explode() -> None:
        raise ValueError("a bug in a handler")

    with pytest.raises(_AlreadyReported):  # run_test re-raises for test frameworks; run() does not
        async with review_app.run_test() as pilot:
            review_app.call_later(explode)
            await pilot.pause()
    assert len(failures) == 1 and isinstance(failures[0], ValueError)
    assert review_app.return_code == 1


async def test_the_numeric_filter_fields_refuse_a_sign_and_letters(tmp_path, store):
    from textual.widgets import Input

    from gristmill.app.tui.modals import FilterScreen
    from gristmill.app.tui.app import make_app
    from gristmill.db.reviews import QueueFilter

    review_app = make_app(tmp_path / "test.db", reviewer="ann")
    async with review_app.run_test() as pilot:
        screen = FilterScreen(QueueFilter())
        review_app.push_screen(screen)
        await pilot.pause()
        field_ = screen.query_one("#min", Input)
        field_.focus()
        await pilot.press("minus", "a", "b", "4", "minus", "2")
        assert field_.value == "42"
        assert screen._value().min_chars == 42


# --- option and config values, generated -------------------------------------------------------------------

NUMBER_TEXT = st.one_of(st.integers(min_value=-(2**70), max_value=2**70).map(str),
                        st.floats(allow_nan=True, allow_infinity=True).map(repr),
                        st.sampled_from(["", "-", "1e999", "0x10", "NaN", "½", "1_000", " 3 "]))
OPTIONS = ["--samples", "--max-tokens", "--temperature", "--top-p", "--seed", "--limit", "--threads",
           "--gpu-layers", "--n-ctx", "--run"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=st.lists(st.tuples(st.sampled_from(OPTIONS), NUMBER_TEXT), min_size=1, max_size=3))
def test_any_option_value_is_one_line_never_a_traceback(values, tmp_path):
    """`generate` on a database that does not exist: every value is either refused naming its option, or
    accepted, and then the missing database is named. Nothing else may happen (and no model is loaded)."""
    args = ["--db", str(tmp_path / "never.db"), "generate"]
    for option, value in values:
        args += [option, value]
    result = runner.invoke(app, args)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and "Traceback" not in result.output
    assert "never.db" in lines[0] or any(option in lines[0] or option[2:].replace("-", "_") in lines[0]
                                         for option, _ in values), lines[0]
    assert not (tmp_path / "never.db").exists()


CONFIG_KEYS = ["samples", "max_tokens", "temperature", "top_p", "top_k", "min_p", "repeat_penalty", "seed",
               "threads", "gpu_layers", "flash_attn", "n_ctx", "n_ctx_cap", "pool", "style", "stop", "add_bos"]
TOML_VALUES = st.one_of(st.integers(min_value=-(2**63), max_value=2**63 - 1).map(str),
                        st.floats(allow_nan=True, allow_infinity=True).map(
                            lambda f: "nan" if f != f else "inf" if f == float("inf") else "-inf"
                            if f == float("-inf") else repr(f)),
                        st.booleans().map(lambda b: "true" if b else "false"),
                        # control characters are not TOML in any string: that is a syntax error, tested elsewhere
                        st.text(st.characters(exclude_categories=("Cs", "Cc")), max_size=5).map(
                            lambda t: json.dumps(t, ensure_ascii=False)), st.just('["", "x"]'), st.just("[1]"))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from(CONFIG_KEYS), value=TOML_VALUES)
def test_any_config_value_is_accepted_or_named(key, value, tmp_path):
    write(tmp_path / "gristmill.toml", f"[generate]\n{key} = {value}\n")
    with open_store(tmp_path / "test.db"):
        pass
    result = runner.invoke(app, ["stats"])
    assert "Traceback" not in result.output
    assert result.exit_code in (0, 2), result.output
    if result.exit_code == 2:
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1 and f"generate.{key}" in lines[0], result.output
