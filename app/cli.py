"""The `gristmill` command line. Commands parse options and call the pipeline; no logic lives here.

Exit codes: 0 ok, 1 runtime failure, 2 bad input, 130 interrupted.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape

from gristmill import __version__, locations
from gristmill.app.config import Config, ConfigError, load_config

app = typer.Typer(add_completion=False, no_args_is_help=False, rich_markup_mode=None,
                  help="Turn a base model's completions into reviewed SFT data.")
out = Console(highlight=False, soft_wrap=True)  # never wrap: lines are read by scripts
err = Console(stderr=True, highlight=False, soft_wrap=True)


class State:
    db_path: Path = locations.default_database()
    config: Config = Config()


def bad_input(message: str) -> typer.Exit:
    err.print(escape(message), markup=True)
    return typer.Exit(2)


def setup_logging() -> None:
    """gristmill's log (llama.cpp's native lines included) goes to a file, never over the terminal."""
    handler = logging.FileHandler(locations.log_file(), encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("gristmill")
    root.addHandler(handler)
    root.setLevel(logging.INFO)


def open_db():
    from gristmill.db import open_store
    return open_store(State.db_path)


@app.callback(invoke_without_command=True)
def main_callback(
    ctx: typer.Context,
    db: Annotated[Optional[Path], typer.Option("--db", envvar="GRISTMILL_DB", help="SQLite database file.")] = None,
    config: Annotated[Optional[Path], typer.Option("--config", help="Project config (default ./gristmill.toml).")] = None,
    version: Annotated[bool, typer.Option("--version", help="Print the version.")] = False,
) -> None:
    if version:
        out.print(f"gristmill {__version__}")
        raise typer.Exit()
    State.db_path = db or locations.default_database()
    try:
        State.config = load_config(config or locations.project_config())
    except ConfigError as error:
        raise bad_input(str(error))
    setup_logging()
    if ctx.invoked_subcommand is None:
        from gristmill.app.cli_review import review
        ctx.invoke(review)


@app.command()
def add(
    files: Annotated[list[Path], typer.Argument(help=".jsonl, .json (a list), .csv (header row) or .txt files.")],
    type_: Annotated[Optional[str], typer.Option("--type", help="Instruction type for every record.")] = None,
    instruction_key: Annotated[str, typer.Option(help="Key holding the instruction.")] = "instruction",
    input_key: Annotated[str, typer.Option(help="Key holding the optional input.")] = "input",
    type_key: Annotated[Optional[str], typer.Option(help="Key holding the type (default: instruction_type, category, type).")] = None,
    id_key: Annotated[str, typer.Option(help="Key holding an external id.")] = "id",
) -> None:
    """Import instructions. A file with any bad line imports nothing and lists FILE:LINE: problems."""
    from gristmill.app.ingest import KeyMap, import_file

    keys = KeyMap(instruction=instruction_key, input=input_key, type=type_key, id=id_key)
    failed = False
    with open_db() as store:
        for path in files:
            report = import_file(store, path, keys, type_.strip().lower() if type_ else None)
            if report.ok:
                out.print(f"{path}: added {report.added}, skipped {report.duplicates} duplicate(s)")
                continue
            failed = True
            for line in report.problems:
                err.print(escape(line))
            hidden = report.problem_count - len(report.problems)
            if hidden:
                err.print(f"{path}: ... and {hidden} more problem(s)")
            err.print(f"{path}: nothing imported ({report.problem_count} problem(s))")
    if failed:
        raise typer.Exit(2)


@app.command()
def stats(as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False) -> None:
    """Counts by status, type and decision; acceptance by type, style, reviewer, run and flag; lengths; throughput."""
    from gristmill.app.stats import collect_all

    with open_db() as store:
        data = collect_all(store)
    if as_json:
        out.print_json(json.dumps(data))
        return
    out.print(f"database: {State.db_path}")
    for section, counts in data.items():
        if section in ("response_lengths", "throughput"):
            continue  # series: see --json or the app's stats room
        out.print(f"{section}:")
        for key, value in counts.items():
            if isinstance(value, dict):  # acceptance by group
                out.print(f"  {escape(str(key))}:")
                for name, c in value.items():
                    shown = "-" if c["rate"] is None else f"{c['rate']:.0%}"
                    out.print(f"    {escape(str(name)):<22} {shown:>5} accepted ({c['accept']} acc, "
                              f"{c['reject']} rej, {c['skip']} skip)")
            else:
                out.print(f"  {escape(str(key)):<24} {value}")


@app.command()
def doctor(
    model: Annotated[Optional[str], typer.Option(help="Inspect this GGUF (default: the embedded model).")] = None,
) -> None:
    """Inspect the database, a model (vocab only: instant on a 20 GB file) and the setup."""
    from gristmill.app.doctor import run_doctor

    try:
        lines, warnings = run_doctor(State.db_path, replace(State.config.generate, model=model or State.config.generate.model))
    except FileNotFoundError as error:
        raise bad_input(f"doctor: {error}")
    for line in lines:
        out.print(escape(line))
    for warning in warnings:
        err.print(f"[yellow]warning:[/] {escape(warning)}")


@app.command()
def styles() -> None:
    """List the built-in prompt styles and the style files in the current directory."""
    from gristmill.app.prompts import list_styles

    for style in list_styles([Path.cwd()]):
        out.print(f"{style.name:<14} {escape(style.source):<10} {escape(style.description)}")
        out.print(f"{'':<14} stop: {escape(json.dumps(list(style.stop)))}")


@app.command()
def preview(
    instruction: Annotated[Optional[str], typer.Argument(help="Instruction text to render.")] = None,
    item: Annotated[Optional[int], typer.Option(help="Render the stored instruction with this id instead.")] = None,
    style: Annotated[Optional[str], typer.Option(help="Prompt style name or TOML file.")] = None,
    input_text: Annotated[str, typer.Option("--input", help="Optional input/context.")] = "",
    type_: Annotated[str, typer.Option("--type", help="Instruction type (picks the frame).")] = "general",
    seed: Annotated[int, typer.Option(help="Item seed for the few-shot draw.")] = 0,
    model: Annotated[Optional[str], typer.Option(help="Count tokens with this GGUF.")] = None,
    ids: Annotated[bool, typer.Option("--ids", help="Also print the token ids.")] = False,
) -> None:
    """Print exactly what the model will be fed: prompt text, token count, stop sequences."""
    from gristmill.app.preview import render_preview
    from gristmill.app.prompts import StyleError

    config = replace(State.config.generate, model=model or State.config.generate.model,
                     style=style or State.config.generate.style)
    try:
        if item is not None:
            with open_db() as store:
                from gristmill.db import instructions as instructions_db
                row = instructions_db.get(store, item)
            if row is None:
                raise bad_input(f"preview: no instruction with id {item}")
            instruction, input_text, type_ = row["instruction"], row["input"], row["instruction_type"]
        if instruction is None:
            raise bad_input("preview: give an instruction or --item ID")
        report = render_preview(config, instruction, input_text, type_, seed, show_ids=ids)
    except StyleError as error:
        raise bad_input(str(error))
    sys.stdout.write(report)


from gristmill.app import cli_export, cli_generate, cli_review  # noqa: E402  (commands register on `app`)

_ = (cli_generate, cli_review, cli_export)


def main() -> None:
    app()
