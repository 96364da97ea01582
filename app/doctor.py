"""`gristmill doctor`: what the database, the model and the setup look like, in plain lines."""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from gristmill import locations
from gristmill.app.config import GenerateConfig
from gristmill.app.engines import open_engine
from gristmill.app.errors import BadInput
from gristmill.models.gguf import CHAT_TOKENS, describe_metadata


@dataclass
class DoctorReport:
    lines: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # each a one-line error; any makes the command exit 2


def run_doctor(db_path: Path, config: GenerateConfig, *, db_named: bool = False) -> DoctorReport:
    """Every section, even when another is broken: doctor exists to diagnose exactly that.

    `db_named`: the path was typed for this command (--db), so a missing file is a problem (a typo), not the
    normal state of a fresh setup (the default or GRISTMILL_DB location, before the first `add`).
    """
    report = DoctorReport(lines=["database:"])
    lines, warnings = report.lines, report.warnings
    if db_path.exists():
        from gristmill.db import StoreError, open_store
        from gristmill.db.connection import pending_migrations, schema_version
        from gristmill.db.stats import health

        lines.append(f"  path: {db_path.resolve()}")
        try:
            store = open_store(db_path, migrate=False, create=False)
        except StoreError as error:
            lines.append(f"  problem: {error}")
            report.problems.append(str(error))
        else:
            with store:
                applied, pending = schema_version(store), pending_migrations(store)
                lines.append(
                    f"  schema: {applied[-1] if applied else 'empty'} ({len(applied)} migrations applied, "
                    f"{len(pending)} pending)"
                )
                lines += [f"  {key}: {value}" for key, value in health(store).items()]
                _hand_edits(store, warnings)
                if pending:
                    warnings.append(
                        f"database is at an older schema; the next command upgrades it ({', '.join(pending)})"
                    )
    elif db_named:
        lines.append(f"  path: {db_path.absolute()} (does not exist)")
        report.problems.append(f"database {db_path}: does not exist (`gristmill add FILE` creates it)")
    else:
        lines.append(f"  path: {db_path.resolve()} (does not exist yet; `gristmill add` creates it)")

    try:
        _model_section(report, config)
    except BadInput as error:
        lines += ["model:", f"  problem: {error.message}"]
        report.problems.append(error.message)

    lines += [
        "setup:",
        f"  gristmill: {_version('gristmill')}",
        f"  llama-cpp-python: {_version('llama-cpp-python')}",
        f"  textual: {_version('textual')}",
        f"  sqlite-utils: {_version('sqlite-utils')}",
        f"  log file: {locations.log_file()}",
        f"  cache: {locations.cache_dir()}",
    ]
    return report


def _model_section(report: DoctorReport, config: GenerateConfig) -> None:
    lines, warnings = report.lines, report.warnings
    from gristmill.models.llama_cpp_engine import LlamaCppEngine, chat_control_tokens

    from gristmill.models.fingerprint import cached_fingerprint, total_size

    engine = open_engine(config, vocab_only=True)
    try:
        assert isinstance(engine, LlamaCppEngine)  # doctor reads GGUF metadata: llama.cpp's engine only
        # not engine.info(): that hashes the whole file, minutes on a 20 GB model; the doctor shows the
        # fingerprint only if a run already computed it
        description = describe_metadata(engine.metadata, chat_control_tokens(engine, CHAT_TOKENS))
        kind = "instruction-tuned" if description.looks_instruction_tuned else "base"
        path = Path(engine.path)
        known = cached_fingerprint(path)
        bos_id = engine.bos_id if engine.bos_id >= 0 else None
        eos_id = engine.eos_id if engine.eos_id >= 0 else None
        lines += [
            "model:",
            f"  path: {path}",
            f"  name: {description.name}",
            f"  architecture: {description.architecture}",
            f"  kind: {kind}",
            *[f"    because: {e}" for e in description.evidence],
            *[f"    not decisive: {note}" for note in description.notes],
            f"  BOS: id {bos_id}{_text(engine, bos_id)}, added: {'yes' if engine.add_bos else 'no'} "
            f"({engine._add_bos_source}: "
            f"tokenizer.ggml.add_bos_token = {engine.metadata.get('tokenizer.ggml.add_bos_token', 'unset')})",
            f"  EOS: id {eos_id}{_text(engine, eos_id)}",
            f"  context length (training): {engine.context_length}; n_ctx used: {engine.n_ctx}",
            f"  chat template: {'present, never used: ' + repr(description.chat_template_first_line) if description.has_chat_template else 'none'}",
            f"  size: {total_size(path) / 1e6:.1f} MB",
            f"  fingerprint: {known or 'not computed yet (the first generate hashes the file once and caches it)'}",
        ]
        if description.looks_instruction_tuned:
            warnings.append(
                "this model looks instruction-tuned: Stage-1 SFT data should come from a base model "
                f"({'; '.join(description.evidence)})"
            )
    finally:
        engine.close()


def _text(engine, token_id: int | None) -> str:
    """A token's text beside its id: `151643 '<|endoftext|>'` says more than the number (Qwen's BOS is its EOS)."""
    token_text = getattr(engine, "token_text", None)
    return f" {token_text(token_id)!r}" if token_id is not None and token_text else ""


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def _hand_edits(store, warnings: list[str]) -> None:
    """What rows written by hand left behind: accepted records no export can include, reviews of deleted
    generations. Warnings, not problems: the database works; the user should know."""
    from gristmill.db.exports import not_exportable
    from gristmill.db.generations import pending_without_instruction
    from gristmill.db.stats import not_json, orphaned_reviews

    for why, count in not_exportable(store).items():
        warnings.append(f"{count:,} accepted record(s) {why}: no export can include them")
    orphans = orphaned_reviews(store)
    if orphans:
        warnings.append(f"{orphans:,} review row(s) name a generation that is gone (deleted by hand); kept as logged")
    if stranded := pending_without_instruction(store):
        warnings.append(
            f"{stranded:,} pending generation(s) name an instruction that is gone (deleted by hand): "
            "they can never run, and their runs never finish"
        )
    for table, column, ids in not_json(store):
        shown = ", ".join(map(str, ids[:10])) + (" …" if len(ids) > 10 else "")
        warnings.append(f"{table}.{column} is not JSON in {len(ids):,} row(s) (id {shown}): commands reading them stop")
