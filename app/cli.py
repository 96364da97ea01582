"""The `gristmill` command line. Commands parse options and call the pipeline; no logic lives here.

One error boundary (`BoundaryGroup.main`) serves every command: an expected failure (`gristmill.app.errors`)
is one line on stderr and an exit code, 0 ok, 1 runtime failure, 2 bad input or usage, 130 interrupted; a bug
is one line naming what broke and where its crash report is (`gristmill.app.crash`). No command catches its
own list of exceptions, and no traceback ever reaches the terminal.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import traceback
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.markup import escape
from typer.core import TyperGroup

from gristmill import __version__, locations
from gristmill.app.config import Config, load_config
from gristmill.app.consoles import err, out
from gristmill.app.errors import (
    EXIT_BAD_INPUT,
    EXIT_INTERRUPTED,
    EXIT_RUNTIME,
    BadInput,
    Interrupted,
    as_expected,
    interrupted_exit_code,
    stop_on_sigterm,
)
from gristmill.app.textsafe import visible

log = logging.getLogger("gristmill.cli")
# until the log file is set up, nothing of ours may fall through to logging's last-resort stderr printer
logging.getLogger("gristmill").addHandler(logging.NullHandler())


def one_line(text: str) -> str:
    """A message as one printable line: control characters and undecodable file-name bytes made visible."""
    text = visible(" ".join(text.splitlines()))
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def run_guarded(invoke: Callable[[], Any]) -> int:
    """The boundary: run the command line, turn whatever escapes it into one line on stderr and an exit code."""
    from gristmill.app import crash

    try:
        result = invoke()
    except SystemExit:
        raise
    except BrokenPipeError:  # `gristmill stats | head`: the reader left; nothing to say to anyone
        _silence_stdout()
        return EXIT_RUNTIME
    except BaseException as error:  # noqa: BLE001 - this is the one place that sees everything
        if _is_a(error, "ClickException"):  # usage: unknown option, bad value, missing argument
            context = getattr(error, "ctx", None)
            where = context.command_path if context is not None else "gristmill"
            hint = f" (see '{where} --help')" if _is_a(error, "UsageError") else ""
            format_message = getattr(error, "format_message", None)  # every click exception has it
            _say(f"{where}: {format_message() if callable(format_message) else error}{hint}")
            return int(getattr(error, "exit_code", EXIT_BAD_INPUT))
        if _is_a(error, "Abort"):  # Ctrl-D or Ctrl-C at a prompt
            _say("gristmill: interrupted")
            return interrupted_exit_code()
        expected = as_expected(error)
        if expected is not None:  # the traceback goes to the log file only, redacted like a crash report
            log.info(
                "exit %d: %s\n%s",
                expected.exit_code,
                crash.redact(expected.message),
                crash.redact("".join(traceback.format_exception(error))),
            )
            _say(expected.message)
            return interrupted_exit_code() if expected.exit_code == EXIT_INTERRUPTED else expected.exit_code
        line = crash.report_crash(error)
        log.error("%s", line)
        _say(line)
        return EXIT_RUNTIME
    if result == EXIT_INTERRUPTED:  # typer turns a bare Ctrl-C into Exit(130) without a word
        _say("gristmill: interrupted")
        return interrupted_exit_code()
    return result if isinstance(result, int) else 0


def _is_a(error: BaseException, name: str) -> bool:
    """Click's exception classes by name: typer ships its own copy of click (`typer._click`) in newer versions,
    the real click in older ones, and the boundary must know both."""
    return any(
        cls.__name__ == name and cls.__module__.split(".")[0] in ("click", "typer") for cls in type(error).__mro__
    )


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def _say(message: str) -> None:
    try:
        sys.stderr.write(one_line(message) + "\n")
        sys.stderr.flush()
    except OSError:
        pass


class BoundaryGroup(TyperGroup):
    """The root command: every invocation (the installed entry point and CliRunner alike) passes the boundary."""

    def main(
        self,
        args: Any = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        code = run_guarded(
            lambda: super(BoundaryGroup, self).main(
                args, prog_name or "gristmill", complete_var, False, windows_expand_args, **extra
            )
        )
        if standalone_mode:
            sys.exit(code)
        return code


app = typer.Typer(
    cls=BoundaryGroup,
    add_completion=False,
    no_args_is_help=False,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    help="Turn a base model's completions into reviewed SFT data.",
)


class State:
    db_path: Path = locations.default_database()
    db_source: str = "default"  # "--db", "GRISTMILL_DB" or "default": named in messages about the path
    config: Config = Config()
    config_path: Path | None = None  # the file `config` was read from, if any


def setup_logging() -> None:
    """gristmill's log (llama.cpp's native lines included) goes to a file, never over the terminal.

    A state directory that cannot be written costs the log, not the command.
    """
    root = logging.getLogger("gristmill")
    if any(isinstance(h, logging.FileHandler) for h in root.handlers):
        return
    try:
        handler = logging.FileHandler(locations.log_file(), encoding="utf-8")
    except OSError:
        return
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.INFO)


def _is_text(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def bad_input(message: str) -> BadInput:
    """`raise bad_input("...")`: kept for commands written before `gristmill.app.errors`."""
    return BadInput(message)


def _named_by() -> str:
    return f" (from {State.db_source})" if State.db_source != "default" else ""


def open_db(*, create: bool = False):
    """The command's database. Only commands that make data (`add`, `generate`) create the file, and never
    a directory: a typo in `--db` is an error naming the path, not a new empty database somewhere."""
    from gristmill.db import StoreError, open_store

    path = State.db_path
    if create and not path.exists() and not path.parent.is_dir():
        raise BadInput(
            f"database {path}{_named_by()}: directory {path.parent} does not exist (gristmill creates "
            "the database file, never directories)"
        )
    try:
        return open_store(path, create=create)
    except StoreError as error:
        prefix = f"database {path}:"
        message = str(error)
        if message.startswith(prefix):
            message = f"database {path}{_named_by()}:{message[len(prefix) :]}"
        raise BadInput(message) from error


def _source(ctx: typer.Context, name: str) -> str:
    """Where an option's value came from (COMMANDLINE, ENVIRONMENT, DEFAULT), by name across click copies."""
    source = ctx.get_parameter_source(name)
    return source.name if source is not None else "DEFAULT"


@app.callback(invoke_without_command=True)
def main_callback(
    ctx: typer.Context,
    db: Annotated[
        Optional[Path], typer.Option("--db", metavar="PATH", envvar="GRISTMILL_DB", help="SQLite database file.")
    ] = None,
    config: Annotated[
        Optional[Path],
        typer.Option(
            "--config", metavar="PATH", envvar="GRISTMILL_CONFIG", help="Project config (default ./gristmill.toml)."
        ),
    ] = None,
    version: Annotated[bool, typer.Option("--version", help="Print the version.")] = False,
) -> None:
    if version:
        out.print(f"gristmill {__version__}")
        raise typer.Exit()
    setup_logging()
    State.db_path = db or locations.default_database()
    State.db_source = {"COMMANDLINE": "--db", "ENVIRONMENT": "GRISTMILL_DB"}.get(_source(ctx, "db"), "default")
    if config is not None:  # named explicitly (--config or GRISTMILL_CONFIG): it must exist
        source = "--config" if _source(ctx, "config") == "COMMANDLINE" else "GRISTMILL_CONFIG"
        if not config.exists():
            raise BadInput(f"config {config} (from {source}): does not exist")
        State.config, State.config_path = load_config(config), config
    else:  # the default ./gristmill.toml is optional
        default_config = locations.project_config()
        State.config = load_config(default_config)
        State.config_path = default_config if default_config.exists() else None
    if ctx.invoked_subcommand is None:
        from gristmill.app.cli_review import review

        ctx.invoke(review)


@app.command()
def add(
    files: Annotated[
        list[Path], typer.Argument(metavar="FILE", help=".jsonl, .json (a list), .csv (header row) or .txt files.")
    ],
    type_: Annotated[
        Optional[str], typer.Option("--type", metavar="TYPE", help="Instruction type for every record.")
    ] = None,
    instruction_key: Annotated[str, typer.Option(metavar="KEY", help="Key holding the instruction.")] = "instruction",
    input_key: Annotated[str, typer.Option(metavar="KEY", help="Key holding the optional input.")] = "input",
    type_key: Annotated[
        Optional[str],
        typer.Option(metavar="KEY", help="Key holding the type (default: instruction_type, category, type)."),
    ] = None,
    id_key: Annotated[str, typer.Option(metavar="KEY", help="Key holding an external id.")] = "id",
) -> None:
    """Import instructions. A file with any bad line imports nothing and lists FILE:LINE: problems."""
    from gristmill.app.ingest import KeyMap, import_file, keys_mentioned, renamed_elsewhere

    keys = KeyMap(instruction=instruction_key, input=input_key, type=type_key, id=id_key)
    from gristmill.app.cli_progress import say_waiting

    if type_ is not None and (not type_.strip() or "," in type_):  # '' had meant general; 'a,b' no --types selects
        raise BadInput(f"add: --type {type_!r}: give one type name (no commas), or leave --type out")

    failed = 0
    mentioned = keys_mentioned(files, keys)  # a renamed key another file has: this file is of another shape
    with open_db(create=True) as store:
        store.on_busy = say_waiting  # a long wait for another writer's lock is said, not silent
        for path in files:
            try:
                report = import_file(
                    store, path, keys, type_.strip().lower() if type_ else None, renamed_elsewhere(mentioned, path)
                )
            except KeyboardInterrupt:  # the file's transaction was rolled back: say what that means
                raise Interrupted(
                    f"interrupted: nothing from {path} was imported (files reported as added above are kept)"
                ) from None
            if report.ok:
                blank = f" and {report.blank} blank line(s)" if report.blank else ""
                said = f"{path}: added {report.added}, skipped {report.duplicates} duplicate(s){blank}"
                out.print(escape(one_line(said)))
                for note in report.notes:
                    out.print(escape(one_line(f"{path}: {note}: imported without it (another file given has it)")))
                continue
            failed += 1
            if report.problem_count == 1:  # the common case stays one line
                err.print(escape(one_line(f"{report.problems[0]} (nothing imported from {path})")))
                continue
            for line in report.problems:
                err.print(escape(one_line(line)))
            hidden = report.problem_count - len(report.problems)
            if hidden:
                err.print(escape(one_line(f"{path}: ... and {hidden} more problem(s)")))
            err.print(escape(one_line(f"{path}: nothing imported ({report.problem_count} problem(s))")))
    if failed:
        raise typer.Exit(EXIT_BAD_INPUT)


@app.command()
def stats(as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False) -> None:
    """Counts by status, type and decision; acceptance by type, style, reviewer, run and flag; lengths; throughput."""
    from gristmill.app.stats import collect_all

    with open_db() as store:
        data = collect_all(store)
    if as_json:
        out.print_json(json.dumps(data))
        return
    out.print(f"database: {escape(one_line(str(State.db_path)))}")
    for section, counts in data.items():
        if section in ("response_lengths", "throughput"):
            continue  # series: see --json or the app's stats room
        out.print(f"{section}:")
        for key, value in counts.items():
            if isinstance(value, dict):  # acceptance by group
                out.print(f"  {escape(one_line(str(key)))}:")
                for name, c in value.items():
                    shown = "-" if c["rate"] is None else f"{c['rate']:.0%}"
                    out.print(
                        f"    {escape(one_line(str(name))):<22} {shown:>5} accepted ({c['accept']} acc, "
                        f"{c['reject']} rej, {c['skip']} skip)"
                    )
            else:
                out.print(f"  {escape(one_line(str(key))):<24} {value}")


@app.command()
def doctor(
    model: Annotated[
        Optional[str], typer.Option(metavar="GGUF", help="Inspect this GGUF (default: the embedded model).")
    ] = None,
) -> None:
    """Inspect the database, a model (vocab only: instant on a 20 GB file) and the setup.

    Every section is reported even when one is broken; the first problem is the closing line, exit 2.
    """
    from gristmill.app.doctor import run_doctor

    report = run_doctor(
        State.db_path,
        replace(State.config.generate, model=model or State.config.generate.model),
        db_named=State.db_source == "--db",
    )
    for line in report.lines:
        out.print(escape(one_line(line)))
    for warning in report.warnings:
        err.print(f"[yellow]warning:[/] {escape(one_line(warning))}")
    if report.problems:
        raise BadInput(
            report.problems[0]
            if len(report.problems) == 1
            else f"{report.problems[0]} (and {len(report.problems) - 1} more problem(s) above)"
        )


@app.command()
def styles() -> None:
    """List the built-in prompt styles and the style files in the current directory."""
    from gristmill.app.prompts import list_styles

    found, broken = list_styles([Path.cwd()])
    for style in found:
        out.print(f"{escape(style.name):<14} {escape(style.source):<10} {escape(style.description)}")
        out.print(f"{'':<14} stop: {escape(json.dumps(list(style.stop)))}")
    for problem in broken:
        err.print(f"[yellow]not loaded:[/] {escape(problem)}")
    if broken:
        err.print(f"{len(broken)} style file(s) in {escape(str(Path.cwd()))} did not load (see above)")


@app.command()
def preview(
    instruction: Annotated[Optional[str], typer.Argument(metavar="TEXT", help="Instruction text to render.")] = None,
    item: Annotated[
        Optional[int], typer.Option(metavar="ID", help="Render the stored instruction with this id instead.")
    ] = None,
    style: Annotated[Optional[str], typer.Option(metavar="STYLE", help="Prompt style name or TOML file.")] = None,
    input_text: Annotated[
        Optional[str], typer.Option("--input", metavar="TEXT", help="Optional input/context.")
    ] = None,
    type_: Annotated[
        Optional[str],
        typer.Option("--type", metavar="TYPE", help="Instruction type (picks the frame; default general)."),
    ] = None,
    seed: Annotated[
        Optional[int],
        typer.Option(
            metavar="N", min=0, max=2**63 - 1, help="The run seed, as generate --seed (default: the config's)."
        ),
    ] = None,
    sample: Annotated[
        int, typer.Option(metavar="K", min=1, help="Which sample of the instruction (1 is the first).")
    ] = 1,
    run: Annotated[
        Optional[int], typer.Option(metavar="ID", help="Render with this run's own style and seed, as it fed them.")
    ] = None,
    model: Annotated[Optional[str], typer.Option(metavar="GGUF", help="Count tokens with this GGUF.")] = None,
    ids: Annotated[bool, typer.Option("--ids", help="Also print the token ids.")] = False,
) -> None:
    """Print exactly what generate feeds for this instruction and sample: prompt text, token count, stops.

    A few-shot draw depends on the item's seed, which generate derives from the run seed, the instruction and
    the sample number: the same three here give the same prompt."""
    from gristmill.app.ingest import content_hash
    from gristmill.app.preview import render_preview
    from gristmill.app.prompts import item_seed

    config = replace(
        State.config.generate, model=model or State.config.generate.model, style=style or State.config.generate.style
    )
    stored_hash, run_style_obj = None, None
    if item is not None or run is not None:
        with open_db() as store:
            if item is not None:
                if instruction is not None:
                    raise BadInput("preview: give an instruction or --item ID, not both")
                if input_text is not None or type_ is not None:  # they had been ignored without a word
                    raise BadInput("preview: --item ID renders the stored input and type; leave --input and --type out")
                row = _stored_instruction(store, item)
                instruction, input_text, type_ = row["instruction"], row["input"], row["instruction_type"]
                stored_hash = row["content_hash"]
            if run is not None:
                config, run_style_obj = _run_preview_settings(store, run, config, style, seed, sample, model)
    if instruction is None:
        raise BadInput("preview: give an instruction or --item ID")
    input_text, type_ = input_text or "", type_ or "general"
    if not instruction.strip():  # `add` refuses it: a preview of it would show a prompt no run ever feeds
        raise BadInput("preview: the instruction is blank")
    for label, text in (("the instruction", instruction), ("--input", input_text), ("--type", type_)):
        if not _is_text(text):
            raise BadInput(f"preview: {label} is not valid UTF-8 text (a lone surrogate or undecodable bytes)")
    if seed is not None:
        config = replace(config, seed=seed)
    seed_of_item = item_seed(config.seed, stored_hash or content_hash(instruction, input_text), sample - 1)
    sys.stdout.write(
        render_preview(config, instruction, input_text, type_, seed_of_item, show_ids=ids, style=run_style_obj)
    )


def _stored_instruction(store, instruction_id: int) -> dict:
    from gristmill.db import instructions as instructions_db

    row = instructions_db.get(store, instruction_id)
    if row is None:
        raise BadInput(f"preview: no instruction with id {instruction_id} in {State.db_path}")
    return row


def _run_preview_settings(
    store, run_id: int, config, style: str | None, seed: int | None, sample: int, model: str | None
):
    """`preview --run N`: the run's stored style bound to its seed, its stops and BOS rule, and its model file
    unless --model names one."""
    from gristmill.app.generate import run_style
    from gristmill.db import runs as runs_db

    record = runs_db.get(store, run_id)
    if record is None:
        raise BadInput(f"preview: no run {run_id} in {State.db_path}")
    if style is not None or seed is not None:
        raise BadInput("preview: --run N renders with the run's own style and seed; leave --style and --seed out")
    if sample > record.samples:
        raise BadInput(f"preview: run {run_id} draws {record.samples} sample(s) an instruction; --sample {sample}")
    model = model or record.settings.get("model_path") or config.model
    stop = list(record.params.get("stop") or ())  # the run's own stops and BOS rule, as it fed them
    add_bos = record.params.get("add_bos", config.add_bos)
    return replace(config, seed=record.seed, model=model, stop=stop, add_bos=add_bos), run_style(record)


from gristmill.app import cli_export, cli_generate, cli_review  # noqa: E402  (commands register on `app`)

_ = (cli_generate, cli_review, cli_export)


def main() -> None:
    """The installed `gristmill` entry point. A SIGTERM stops the command as Ctrl-C does, then exits 143."""
    import signal

    from gristmill.models import native_log

    signal.signal(signal.SIGTERM, stop_on_sigterm)
    native_log.on_held_interrupt = lambda: _say("stopping (a model load ends at its next step)")
    app(prog_name="gristmill")
