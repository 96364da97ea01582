"""`gristmill export`: accepted records to JSONL with a manifest."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from gristmill.app.cli import State, app, bad_input, out


@app.command("export")
def export_command(
    out_path: Annotated[Path, typer.Argument(metavar="OUT", help="Output JSONL file (written atomically).")],
    format_: Annotated[str, typer.Option("--format", help="native, messages or text; for TRL trainers: prompt-completion (SFT), dpo, kto, tokens (pre-tokenized SFT).")] = "native",
    type_: Annotated[Optional[str], typer.Option("--type", help="Only this instruction type.")] = None,
    style: Annotated[Optional[str], typer.Option(help="Only records generated with this style.")] = None,
    run: Annotated[Optional[int], typer.Option(help="Only this run.")] = None,
    reviewer: Annotated[Optional[str], typer.Option(help="Only decisions by this reviewer.")] = None,
    min_chars: Annotated[Optional[int], typer.Option(min=0, help="Minimum response length.")] = None,
    max_chars: Annotated[Optional[int], typer.Option(min=0, help="Maximum response length.")] = None,
    exclude_flag: Annotated[Optional[list[str]], typer.Option(help="Leave out records with this flag (repeatable).")] = None,
    dedup: Annotated[bool, typer.Option("--dedup/--no-dedup", help="Drop exact and near duplicates.")] = True,
    dedup_threshold: Annotated[float, typer.Option(min=0.01, max=1.0, help="Jaccard similarity that counts as near-duplicate.")] = 0.8,
    tokenizer: Annotated[Optional[Path], typer.Option(help="tokens: this GGUF's tokenizer for every run (default: the model path each run recorded).")] = None,
    reason: Annotated[Optional[list[str]], typer.Option(help="kto: keep only rejects with this reason (repeatable; 'none': rejects without one).")] = None,
) -> None:
    """Write accepted records as JSONL (dpo and kto use rejects too), with OUT.manifest.json beside it."""
    from gristmill.app.export import FORMATS, export
    from gristmill.app.export_formats import FormatOptions, TokenizerMissing
    from gristmill.models import EngineError
    from gristmill.db import open_store
    from gristmill.db.exports import ExportFilter

    if format_ not in FORMATS:
        raise bad_input(f"export: --format must be one of {', '.join(FORMATS)}, not {format_!r}")
    if not out_path.parent.exists():
        raise bad_input(f"export: directory {out_path.parent} does not exist")
    if not State.db_path.exists():
        raise bad_input(f"export: database {State.db_path} does not exist")
    where = ExportFilter(instruction_type=type_, style=style, run_id=run, reviewer=reviewer, min_chars=min_chars,
                         max_chars=max_chars, exclude_flags=tuple(exclude_flag or ()))
    if tokenizer is not None and format_ != "tokens":
        raise bad_input("export: --tokenizer goes with --format tokens")
    if reason and format_ != "kto":
        raise bad_input("export: --reason goes with --format kto")
    if tokenizer is not None and not tokenizer.is_file():
        raise bad_input(f"export: --tokenizer {tokenizer} is not a file")
    options = FormatOptions(tokenizer=tokenizer, reasons=tuple(reason or ()))
    with open_store(State.db_path) as store:
        try:
            report = export(store, out_path, fmt=format_, where=where, dedup=dedup, dedup_threshold=dedup_threshold,
                            options=options)
        except TokenizerMissing as error:
            raise bad_input(str(error))
        except EngineError as error:
            raise bad_input(f"export: cannot read the tokenizer: {error}")
    out.print(f"{escape(str(out_path))}: {report.records} record(s), sha256 {report.sha256}")
    for key, counts in report.details.items():
        if isinstance(counts, dict):
            shown = ", ".join(f"{n} {k}" for k, n in counts.items()) or "none"
        else:
            shown = str(counts)
        out.print(f"{key.replace('_', ' ')}: {escape(shown)}")
    if report.dropped:
        out.print(f"dedup removed {len(report.dropped)} record(s); the manifest lists each pair")
    out.print(f"manifest: {escape(report.manifest_path)}")
