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
    batch: Annotated[Optional[int], typer.Option(min=1, help="Sequences decoded together in-process (1: one at a time).")] = None,
    gpu_layers: Annotated[Optional[int], typer.Option(help="Layers to offload to the GPU (-1: all).")] = None,
    n_ctx: Annotated[Optional[int], typer.Option(min=16, help="Context size (default: the model's, capped).")] = None,
    add_bos: Annotated[Optional[bool], typer.Option("--add-bos/--no-add-bos", help="Override the GGUF's BOS rule.")] = None,
    pool: Annotated[Optional[str], typer.Option(help="Few-shot pool: builtin, or accepted (adds accepted records).")] = None,
    run: Annotated[Optional[int], typer.Option("--run", help="Continue this run with its own settings.")] = None,
    new_run: Annotated[bool, typer.Option("--new-run", help="Start a new run even if one with these settings exists.")] = False,
    retry_failed: Annotated[bool, typer.Option("--retry-failed", help="Retry items that failed.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", help="Log lines instead of a progress bar.")] = False,
) -> None:
    """Generate completions for every instruction the run lacks; safe to interrupt and re-run."""
    from gristmill.app.engines import open_concurrent, open_engine
    from gristmill.app.generate import RunSettings, open_run
    from gristmill.app.prompts import StyleError, load_style
    from gristmill.models import EngineError, GenerationParams

    config = _merged_config(model=model, style=style, samples=samples, max_tokens=max_tokens,
                            temperature=temperature, top_p=top_p, seed=seed, stop=stop, threads=threads,
                            gpu_layers=gpu_layers, n_ctx=n_ctx, add_bos=add_bos, pool=pool, batch=batch)
    if config.batch < 1:
        raise bad_input(f"generate: batch must be at least 1, not {config.batch}")
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
    try:
        concurrent = open_concurrent(engine, config.batch)
    except EngineError as error:
        engine.close()
        raise bad_input(f"generate: {error}")
    store = open_db()
    run_record = None
    try:
        try:
            run_record, style_obj, settings = open_run(store, engine, settings, run_id=run, new_run=new_run)
        except LookupError as error:
            raise bad_input(f"generate: {error}")
        out.print(f"run {run_record.id}: style {style_obj.name}, model {escape(run_record.model)}, "
                  f"{settings.samples} sample(s) per instruction, seed {run_record.seed}, batch {concurrent.capacity}")
        final = _drive(store, engine, concurrent, run_record, style_obj, settings, limit, retry_failed, quiet)
    except KeyboardInterrupt:
        err.print("interrupted: every finished item is saved; run the same command to resume")
        if run_record is not None:
            _summary(store, run_record.id)
        raise typer.Exit(130)
    except RuntimeError as error:
        err.print(f"generate stopped: {escape(str(error))}")
        raise typer.Exit(1)
    finally:
        concurrent.close()
        engine.close()
    _summary(store, run_record.id, final)
    store.close()


def _drive(store, engine, concurrent, run_record, style_obj, settings, limit, retry_failed, quiet):
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
                          f"{p.tokens_per_s:.1f} tok/s, ETA {eta}")
        return run_generation(store, engine, run_record, style_obj, settings, limit=limit,
                              retry_failed=retry_failed, on_progress=log_progress, concurrent=concurrent)

    columns = (TextColumn("[bold]generating"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[rate]} tok/s"), TextColumn("ETA {task.fields[eta]}"),
               TextColumn("refused {task.fields[refused]} failed {task.fields[failed]}"), TimeElapsedColumn())
    with Progress(*columns, console=err, transient=False) as bar:
        task = bar.add_task("generate", total=total, completed=already, rate="-", eta="-", refused=counts["refused"],
                            failed=0 if retry_failed else counts["failed"])

        def show(p):
            eta = "-" if p.eta_s is None else f"{int(p.eta_s) // 60}:{int(p.eta_s) % 60:02d}"
            bar.update(task, completed=p.finished, rate=f"{p.tokens_per_s:.1f}", eta=eta,
                       refused=p.refused, failed=p.failed)
        return run_generation(store, engine, run_record, style_obj, settings, limit=limit,
                              retry_failed=retry_failed, on_progress=show, concurrent=concurrent)


def _summary(store, run_id: int, final=None) -> None:
    from gristmill.db import generations as generations_db

    counts = generations_db.status_counts(store, run_id)
    rate = f", {final.tokens_per_s:.1f} tok/s" if final and final.processed else ""
    out.print(f"run {run_id}: {counts['done']} done, {counts['refused']} refused, {counts['failed']} failed, "
              f"{counts['pending']} pending{rate}")
    if counts["refused"]:
        out.print("refused items are in the database with the reason (generations.error)")
