"""`gristmill stats`, `doctor`, `styles` and `preview`: the commands that look without changing anything."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from gristmill.app.cli import State, app, one_line, open_db
from gristmill.app.consoles import err, out
from gristmill.app.errors import BadInput


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


def _is_text(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


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
