"""`gristmill export`: accepted records to JSONL with a manifest."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from gristmill.app.cli import State, app, one_line, open_db
from gristmill.app.consoles import out
from gristmill.app.errors import BadInput, RuntimeFailure


@app.command("export")
def export_command(
    out_path: Annotated[Path, typer.Argument(metavar="OUT", help="Output JSONL file (written atomically).")],
    format_: Annotated[
        str,
        typer.Option(
            "--format",
            metavar="FORMAT",
            help="native, messages or text; for TRL trainers: prompt-completion (SFT), dpo, kto, tokens (pre-tokenized SFT).",
        ),
    ] = "native",
    type_: Annotated[Optional[str], typer.Option("--type", metavar="TYPE", help="Only this instruction type.")] = None,
    style: Annotated[
        Optional[str], typer.Option(metavar="STYLE", help="Only records generated with this style.")
    ] = None,
    run: Annotated[Optional[int], typer.Option(metavar="ID", help="Only this run.")] = None,
    reviewer: Annotated[Optional[str], typer.Option(metavar="NAME", help="Only decisions by this reviewer.")] = None,
    min_chars: Annotated[
        Optional[int],
        typer.Option(min=0, metavar="N", help="Minimum length of the response exported (the edit, if any)."),
    ] = None,
    max_chars: Annotated[
        Optional[int],
        typer.Option(min=0, metavar="N", help="Maximum length of the response exported (the edit, if any)."),
    ] = None,
    exclude_flag: Annotated[
        Optional[list[str]], typer.Option(metavar="FLAG", help="Leave out records with this flag (repeatable).")
    ] = None,
    dedup: Annotated[
        Optional[str],
        typer.Option(
            "--dedup",
            metavar="RULE",
            help="Which repeats to drop: pair (the default: instruction+input AND response repeat an earlier "
            "record, exact or near), instruction (one record per instruction+input), response, or off. "
            "dpo and kto drop exact repeats of a whole record (or off).",
        ),
    ] = None,
    no_dedup: Annotated[bool, typer.Option("--no-dedup", help="Same as --dedup off.")] = False,
    dedup_threshold: Annotated[
        float,
        typer.Option(
            min=0.01, max=1.0, metavar="J", help="Jaccard similarity (per field) that counts as near-duplicate."
        ),
    ] = 0.8,
    tokenizer: Annotated[
        Optional[Path],
        typer.Option(
            metavar="GGUF",
            help="tokens: this GGUF's tokenizer for every run (default: the model path each run recorded).",
        ),
    ] = None,
    reason: Annotated[
        Optional[list[str]],
        typer.Option(
            metavar="REASON", help="kto: keep only rejects with this reason (repeatable; 'none': rejects without one)."
        ),
    ] = None,
) -> None:
    """Write accepted records as JSONL (dpo and kto use rejects too), with OUT.manifest.json beside it."""
    from gristmill.app.dedup import MODES
    from gristmill.app.export import FORMATS, ExportError, dedup_problem, export, refuse_database_files
    from gristmill.app.export_formats import FormatOptions, TokenizerMissing
    from gristmill.models import EngineError
    from gristmill.db import runs as runs_db
    from gristmill.db import stats as stats_db
    from gristmill.db.exports import ExportFilter

    if format_ not in FORMATS:
        raise BadInput(f"export: --format must be one of {', '.join(FORMATS)}, not {format_!r}")
    if type_ is not None:
        type_ = type_.strip().lower()  # as `add` stores types and `generate --types` selects them
    if no_dedup:
        if dedup not in (None, "off"):
            raise BadInput(f"export: --no-dedup and --dedup {dedup} contradict each other: give one of them")
        dedup = "off"
    if dedup is not None and dedup not in MODES:
        raise BadInput(f"export: --dedup must be one of {', '.join(MODES)}, not {dedup!r}")
    if problem := dedup_problem(format_, dedup):  # a rule typed for dpo or kto, which apply only their own
        raise BadInput(f"export: {problem}")
    dedup = dedup or "pair"
    check_output_path(out_path)
    try:
        refuse_database_files(State.db_path, out_path)
    except ExportError as error:
        raise BadInput(f"export: {error}") from None
    where = ExportFilter(
        instruction_type=type_,
        style=style,
        run_id=run,
        reviewer=reviewer,
        min_chars=min_chars,
        max_chars=max_chars,
        exclude_flags=tuple(exclude_flag or ()),
    )
    if tokenizer is not None and format_ != "tokens":
        raise BadInput("export: --tokenizer goes with --format tokens")
    if reason and format_ != "kto":
        raise BadInput("export: --reason goes with --format kto")
    if tokenizer is not None and not tokenizer.is_file():
        raise BadInput(f"export: --tokenizer {tokenizer} is not a file")
    options = FormatOptions(tokenizer=tokenizer, reasons=tuple(reason or ()))
    if min_chars is not None and max_chars is not None and min_chars > max_chars:
        raise BadInput(f"export: --min-chars {min_chars} is more than --max-chars {max_chars}: nothing could match")
    with open_db() as store:
        if run is not None and runs_db.get(store, run) is None:
            raise BadInput(f"export: no run {run} in {State.db_path}")
        _refuse_names_nothing_has(store, type_, style, reviewer, exclude_flag or [])
        known = set(stats_db.reject_reasons(store)) | {"none"}  # the reasons of the rejects in force
        if unknown := [r for r in reason or () if r not in known]:
            raise BadInput(
                f"export: --reason {unknown[0]!r}: no reject in force carries it (the reasons rejects carry: "
                f"{', '.join(sorted(known))})"
            )
        try:
            report = export(
                store, out_path, fmt=format_, where=where, dedup=dedup, dedup_threshold=dedup_threshold, options=options
            )
        except ExportError as error:
            raise RuntimeFailure(f"export: {error}") from None
        except TokenizerMissing as error:
            raise BadInput(str(error)) from None
        except EngineError as error:
            raise BadInput(f"export: cannot read the tokenizer: {error}") from None
    # dpo and kto records are pairs and labels built from rejects too: "of N accepted" would misstate them
    of_accepted = "" if format_ in ("dpo", "kto") else f" of {report.accepted_in_database} accepted"
    out.print(escape(one_line(f"{out_path}: {report.records} record(s){of_accepted}, sha256 {report.sha256}")))
    if report.left_out_by_filters:
        out.print(f"filters: left out {report.left_out_by_filters} accepted record(s)")
    for key, counts in report.details.items():
        shown = (
            (", ".join(f"{n} {k}" for k, n in counts.items()) or "none") if isinstance(counts, dict) else str(counts)
        )
        out.print(f"{key.replace('_', ' ')}: {escape(shown)}")
    if dedup == "off":
        out.print("dedup: off (nothing dropped)")
    elif report.dedup == "record":
        out.print(f"dedup: dropped {len(report.dropped)} exact repeat(s) of a whole record; the manifest lists each")
    else:
        by = report.dropped_by
        out.print(
            f"dedup rule {dedup}: dropped {len(report.dropped)} record(s) ({by['exact']} exact, "
            f"{by['near']} near at Jaccard >= {dedup_threshold}); the manifest lists each pair"
        )
    for note in report.notes.lines() if report.notes else ():
        out.print(escape(one_line(note)))
    if line := report.not_exportable_line():
        out.print(escape(line))
    out.print(escape(one_line(f"manifest: {report.manifest_path}")))


def _refuse_names_nothing_has(
    store, instruction_type: str | None, style: str | None, reviewer: str | None, exclude_flags: list[str]
) -> None:
    """A filter value the database has nowhere is a typo or the wrong database: it would write an empty file over
    OUT with exit 0 (a value that only selects no accepted record is fine)."""
    from gristmill.app import browse
    from gristmill.app.flags import ALL_FLAGS

    known = browse.choices(store)
    for option, value, values in (
        ("--type", instruction_type, known["types"]),
        ("--style", style, known["styles"]),
        ("--reviewer", reviewer, known["reviewers"]),
        *(("--exclude-flag", flag, list(ALL_FLAGS)) for flag in exclude_flags),
    ):
        if value is not None and value not in values:
            shown = ", ".join(map(str, values[:12])) + (f" and {len(values) - 12} more" if len(values) > 12 else "")
            if option == "--exclude-flag":
                raise BadInput(f"export: --exclude-flag {value!r}: gristmill sets no such flag (the flags: {shown})")
            raise BadInput(f"export: {option} {value!r}: the database has none (it has: {shown or 'none at all'})")


def check_output_path(out_path: Path) -> None:
    """OUT and OUT.manifest.json must be files we can replace atomically: say why not before reading anything."""
    from gristmill.app.export import manifest_path_for

    if str(out_path) == "-":
        raise BadInput(
            "export: OUT '-' (standard output) is not supported: an export is written atomically, with "
            "OUT.manifest.json beside it; give a file name"
        )
    if not out_path.name or out_path.is_dir():  # `.`, `/` and '' have no file name to put the manifest beside
        raise BadInput(f"export: {out_path} is a directory; give a file name, e.g. {out_path / 'data.jsonl'}")
    manifest = manifest_path_for(out_path)
    for path in (out_path, manifest):
        if path.is_dir():
            raise BadInput(f"export: {path} is a directory; give a file name, e.g. {out_path / 'data.jsonl'}")
        if path.exists() and not path.is_file():
            raise BadInput(f"export: {path} is not a regular file; give a file name to write")
    parent = out_path.parent
    if not parent.is_dir():
        raise BadInput(f"export: directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise BadInput(f"export: cannot write in directory {parent} (permission denied)")
