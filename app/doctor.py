"""`gristmill doctor`: what the database, the model and the setup look like, in plain lines."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from gristmill import locations
from gristmill.app.config import GenerateConfig
from gristmill.app.engines import open_engine
from gristmill.models.gguf import CHAT_TOKENS, describe_metadata


def run_doctor(db_path: Path, config: GenerateConfig) -> tuple[list[str], list[str]]:
    lines, warnings = ["database:"], []
    if db_path.exists():
        from gristmill.db import open_store
        from gristmill.db.connection import pending_migrations, schema_version
        from gristmill.db.stats import health

        with open_store(db_path, migrate=False) as store:
            applied, pending = schema_version(store), pending_migrations(store)
            lines += [f"  path: {db_path.resolve()}",
                      f"  schema: {applied[-1] if applied else 'empty'} ({len(applied)} migrations applied, "
                      f"{len(pending)} pending)"]
            lines += [f"  {key}: {value}" for key, value in health(store).items()]
            if pending:
                warnings.append(f"database is at an older schema; the next command upgrades it ({', '.join(pending)})")
    else:
        lines.append(f"  path: {db_path.resolve()} (does not exist yet; `gristmill add` creates it)")

    from gristmill.models.llama_cpp_engine import chat_control_tokens

    from gristmill.models.fingerprint import cached_fingerprint, total_size

    engine = open_engine(config, vocab_only=True)
    try:
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
            *[f"    evidence: {e}" for e in description.evidence],
            f"  BOS: id {bos_id}, added: {'yes' if engine.add_bos else 'no'} ({engine._add_bos_source}: "
            f"tokenizer.ggml.add_bos_token = {engine.metadata.get('tokenizer.ggml.add_bos_token', 'unset')})",
            f"  EOS: id {eos_id}",
            f"  context length (training): {engine.context_length}; n_ctx used: {engine.n_ctx}",
            f"  chat template: {'present, never used: ' + repr(description.chat_template_first_line) if description.has_chat_template else 'none'}",
            f"  size: {total_size(path) / 1e6:.1f} MB",
            f"  fingerprint: {known or 'not computed yet (the first generate hashes the file once and caches it)'}",
        ]
        if description.looks_instruction_tuned:
            warnings.append("this model looks instruction-tuned: Stage-1 SFT data should come from a base model "
                            f"({'; '.join(description.evidence)})")
    finally:
        engine.close()

    lines += ["setup:", f"  gristmill: {_version('gristmill')}", f"  llama-cpp-python: {_version('llama-cpp-python')}",
              f"  textual: {_version('textual')}", f"  sqlite-utils: {_version('sqlite-utils')}",
              f"  log file: {locations.log_file()}", f"  cache: {locations.cache_dir()}"]
    return lines, warnings


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"
