"""`gristmill generate`: headless, resumable generation with a progress bar."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from gristmill.app.cli import State, app, bad_input, err, open_db, out
from gristmill.app.config import GenerateConfig


def _merged_config(**overrides) -> GenerateConfig:
    return replace(State.config.generate, **{k: v for k, v in overrides.items() if v is not None})


@app.command()
def generate(
    model: Annotated[Optional[str], typer.Option(help="GGUF file (first part of a split model). Default: the embedded base model.")] = None,
    style: Annotated[Optional[str], typer.Option(help="completion, few-shot, urial, or a style TOML file.")] = None,
    samples: Annotated[Optional[int], typer.Option(min=1, help="Completions per instruction.")] = None,
    max_tokens: Annotated[Optional[int], typer.Option(min=1)] = None,
    temperature: Annotated[Optional[float], typer.Option(min=0.0)] = None,
    top_p: Annotated[Optional[float], typer.Option(min=0.0, max=1.0)] = None,
    seed: Annotated[Optional[int], typer.Option(help="Run seed; each item's seed derives from it.")] = None,
    stop: Annotated[Optional[list[str]], typer.Option(help="Extra stop string (repeatable).")] = None,
    limit: Annotated[Optional[int], typer.Option(min=1, help="Generate at most this many items now.")] = None,
    types: Annotated[Optional[str], typer.Option(help="Only these instruction types (comma-separated).")] = None,
    threads: Annotated[Optional[int], typer.Option(min=1)] = None,
    gpu_layers: Annotated[Optional[int], typer.Option(help="Layers to offload to the GPU (-1: all).")] = None,
    n_ctx: Annotated[Optional[int], typer.Option(min=16, help="Context size (default: the model's, capped).")] = None,
    add_bos: Annotated[Optional[bool], typer.Option("--add-bos/--no-add-bos", help="Override the GGUF's BOS rule.")] = None,
    pool: Annotated[Optional[str], typer.Option(help="Few-shot pool: builtin, or accepted (adds accepted records).")] = None,
    run: Annotated[Optional[int], typer.Option("--run", help="Continue this run with its own settings.")] = None,
    new_run: Annotated[bool, typer.Option("--new-run", help="Start a new run even if one with these settings exists.")] = False,
    retry_failed: Annotated[bool, typer.Option("--retry-failed", help="Retry items that failed.")] = False,
    server: Annotated[Optional[list[str]], typer.Option("--server", help="llama-server or vLLM base URL (repeatable): generate there through raw /v1/completions.")] = None,
    tokenizer: Annotated[Optional[str], typer.Option(help="With --server: the served model's GGUF (vocab only) or tokenizer.json. Default: --model.")] = None,
    concurrency: Annotated[Optional[int], typer.Option(min=1, help="With --server: requests in flight per server.")] = None,
    server_kind: Annotated[Optional[str], typer.Option(help="llama-server or vllm (default: detected from GET /v1/models).")] = None,
    api_key_env: Annotated[Optional[str], typer.Option(help="Name of the environment variable holding the API key (default GRISTMILL_API_KEY); sent as Authorization: Bearer.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="Log lines instead of a progress bar.")] = False,
) -> None:
    """Generate completions for every instruction the run lacks; safe to interrupt and re-run."""
    from gristmill.app.engines import open_engine
    from gristmill.app.generate import RunSettings, open_run
    from gristmill.app.prompts import StyleError, load_style
    from gristmill.models import EngineError, GenerationParams

    config = _merged_config(model=model, style=style, samples=samples, max_tokens=max_tokens,
                            temperature=temperature, top_p=top_p, seed=seed, stop=stop, threads=threads,
                            gpu_layers=gpu_layers, n_ctx=n_ctx, add_bos=add_bos, pool=pool, server=server,
                            tokenizer=tokenizer, concurrency=concurrency, server_kind=server_kind,
                            api_key_env=api_key_env)
    if config.pool not in ("builtin", "accepted"):
        raise bad_input(f"generate: --pool must be builtin or accepted, not {config.pool!r}")
    try:
        params = GenerationParams(max_tokens=config.max_tokens, temperature=config.temperature, top_p=config.top_p,
                                  top_k=config.top_k, min_p=config.min_p, repeat_penalty=config.repeat_penalty,
                                  stop=tuple(config.stop), seed=config.seed)
        if run is None:
            load_style(config.style)  # a bad style file is bad input: say so before loading a model
    except (ValueError, StyleError) as error:
        raise bad_input(f"generate: {error}")
    settings = RunSettings(style=config.style, samples=config.samples, params=params,
                           types=tuple(t.strip().lower() for t in types.split(",") if t.strip()) if types else (),
                           pool=config.pool)
    try:
        engine = open_engine(config)
    except (EngineError, FileNotFoundError) as error:
        raise bad_input(f"generate: {error}")
    store = open_db()
    run_record = None
    try:
        try:
            run_record, style_obj, settings = open_run(store, engine, settings, run_id=run, new_run=new_run)
        except LookupError as error:
            raise bad_input(f"generate: {error}")
        out.print(f"run {run_record.id}: style {style_obj.name}, model {escape(run_record.model)}, "
                  f"{settings.samples} sample(s) per instruction, seed {run_record.seed}")
        _record_servers(store, engine, run_record.id)
        final = _drive(store, engine, run_record, style_obj, settings, limit, retry_failed, quiet)
    except KeyboardInterrupt:
        err.print("interrupted: every finished item is saved; run the same command to resume")
        if run_record is not None:
            _summary(store, run_record.id)
        raise typer.Exit(130)
    except RuntimeError as error:
        err.print(f"generate stopped: {escape(str(error))}")
        raise typer.Exit(1)
    finally:
        engine.close()
    _summary(store, run_record.id, final)
    store.close()


def _record_servers(store, engine, run_id: int) -> None:
    """A remote run records its endpoints and their GET /v1/models answers (never the key: it is not in them)."""
    servers = getattr(engine, "servers", None)
    if servers is None:
        return
    from gristmill.db import runs as runs_db

    runs_db.record_servers(store, run_id, servers())
    for endpoint in servers():
        out.print(f"server {escape(endpoint['url'])}: {endpoint['kind']}, model {escape(str(endpoint['model']))}, "
                  f"context {endpoint['n_ctx'] or '?'}, concurrency {endpoint['concurrency']}")


def _rotation_note(engine) -> str:
    """Endpoints out of the rotation, for the progress line (empty when all serve)."""
    pool = getattr(engine, "pool", None)
    out_of_rotation = pool.out_of_rotation() if pool is not None else []
    return f", out of rotation: {' '.join(out_of_rotation)}" if out_of_rotation else ""


def _drive(store, engine, run_record, style_obj, settings, limit, retry_failed, quiet):
    from gristmill.app.generate import run_generation
    from gristmill.db import generations as generations_db

    counts = generations_db.status_counts(store, run_record.id)
    total = sum(counts.values())
    already = total - counts["pending"] - (counts["failed"] if retry_failed else 0)
    if quiet:
        last_log = [0.0]

        def log_progress(p):
            if time.monotonic() - last_log[0] >= 5 or p.finished == p.total:
                last_log[0] = time.monotonic()
                eta = f"{p.eta_s:.0f}s" if p.eta_s is not None else "?"
                out.print(f"{p.finished}/{p.total} done, {p.refused} refused, {p.failed} failed, "
                          f"{p.tokens_per_s:.1f} tok/s, ETA {eta}{escape(_rotation_note(engine))}")
        return run_generation(store, engine, run_record, style_obj, settings, limit=limit,
                              retry_failed=retry_failed, on_progress=log_progress)

    columns = (TextColumn("[bold]generating"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[rate]} tok/s"), TextColumn("ETA {task.fields[eta]}"),
               TextColumn("refused {task.fields[refused]} failed {task.fields[failed]}{task.fields[rotation]}"),
               TimeElapsedColumn())
    with Progress(*columns, console=err, transient=False) as bar:
        task = bar.add_task("generate", total=total, completed=already, rate="-", eta="-", refused=counts["refused"],
                            failed=0 if retry_failed else counts["failed"], rotation="")

        def show(p):
            eta = "-" if p.eta_s is None else f"{int(p.eta_s) // 60}:{int(p.eta_s) % 60:02d}"
            bar.update(task, completed=p.finished, rate=f"{p.tokens_per_s:.1f}", eta=eta,
                       refused=p.refused, failed=p.failed, rotation=_rotation_note(engine))
        return run_generation(store, engine, run_record, style_obj, settings, limit=limit,
                              retry_failed=retry_failed, on_progress=show)


def _summary(store, run_id: int, final=None) -> None:
    from gristmill.db import generations as generations_db

    counts = generations_db.status_counts(store, run_id)
    rate = f", {final.tokens_per_s:.1f} tok/s" if final and final.processed else ""
    out.print(f"run {run_id}: {counts['done']} done, {counts['refused']} refused, {counts['failed']} failed, "
              f"{counts['pending']} pending{rate}")
    if counts["refused"]:
        out.print("refused items are in the database with the reason (generations.error)")
