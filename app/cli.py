"""The `gristmill` command line. Commands parse options and call the pipeline; no logic lives here.

One error boundary (`BoundaryGroup.main`) serves every command: an expected failure (`gristmill.app.errors`)
is one line on stderr and an exit code, 0 ok, 1 runtime failure, 2 bad input or usage, 130 interrupted; a bug
is one line naming what broke and where its crash report is (`gristmill.app.crash`). No command catches its
own list of exceptions, and no traceback ever reaches the terminal.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from collections.abc import Callable
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


# commands register on `app` as their modules load, in this order (`--help` lists them so)
from gristmill.app import cli_inspect  # noqa: E402, I001
from gristmill.app import cli_export, cli_generate, cli_review  # noqa: E402

_ = (cli_inspect, cli_generate, cli_review, cli_export)


def main() -> None:
    """The installed `gristmill` entry point. A SIGTERM stops the command as Ctrl-C does, then exits 143."""
    import signal

    from gristmill.models import native_log

    signal.signal(signal.SIGTERM, stop_on_sigterm)
    native_log.on_held_interrupt = lambda: _say("stopping (a model load ends at its next step)")
    app(prog_name="gristmill")
