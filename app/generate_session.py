"""One generation job as the app starts it: the same `open_engine`, `open_run` and `run_generation` as
`gristmill generate`, driven from a thread with callbacks, so the app adds no logic of its own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from gristmill.app.config import GenerateConfig
from gristmill.app.engines import open_engine
from gristmill.app.generate import Progress, RunSettings, open_run, run_generation
from gristmill.app.prompts import list_styles, load_style_for_pool
from gristmill.db import generations as generations_db
from gristmill.db import runs as runs_db
from gristmill.db import open_store
from gristmill.models import GenerationParams, LoadStopped


@dataclass(frozen=True)
class JobRequest:
    """What the generate room's form asks for; anything left out comes from gristmill.toml."""

    style: str
    samples: int
    max_tokens: int
    temperature: float
    model: str | None = None  # GGUF path; None: the configured or embedded model (or the resumed run's)
    run_id: int | None = None  # continue this run with its own stored settings


def settings_for(config: GenerateConfig) -> RunSettings:
    """RunSettings from a config, exactly as the CLI builds them (a bad value raises ValueError)."""
    params = GenerationParams(
        max_tokens=config.max_tokens,
        temperature=config.temperature,
        top_p=config.top_p,
        top_k=config.top_k,
        min_p=config.min_p,
        repeat_penalty=config.repeat_penalty,
        stop=tuple(config.stop),
        seed=config.seed,
    )
    return RunSettings(style=config.style, samples=config.samples, params=params, pool=config.pool)


def merged(config: GenerateConfig, request: JobRequest) -> GenerateConfig:
    return replace(
        config,
        style=request.style,
        samples=request.samples,
        max_tokens=request.max_tokens,
        temperature=request.temperature,
        model=request.model or config.model,
    )


def style_names(directory: Path | None = None) -> list[str]:
    """Built-in styles, then style files in the working directory."""
    styles, _broken = list_styles([directory or Path.cwd()])
    return [s.name if s.source == "built-in" else str(s.source) for s in styles]


@dataclass(frozen=True)
class Started:
    run_id: int
    model: str
    style: str
    total: int
    already: int


def run_job(
    db_path: Path,
    config: GenerateConfig,
    *,
    on_started: Callable[[Started], None],
    on_progress: Callable[[Progress], None],
    on_piece: Callable[[str], None],
    should_stop: Callable[[], bool],
    run_id: int | None = None,
) -> Progress | None:
    """Open the model and the run (`run_id` with its own settings, else the run these settings match, else
    a new one), then generate until done or stopped. Everything finished is committed as it finishes; a
    stop leaves the item in flight pending. Returns the last progress, or None when stopped before the
    run opened. Resuming a run without naming a model loads the model file the run was made with.
    """
    settings = settings_for(config)
    if run_id is None:
        load_style_for_pool(config.style, config.pool)  # a bad style file fails before a model is loaded
    elif config.model is None:
        with open_store(db_path) as store:
            run = runs_db.get(store, run_id)
        if run is None:
            raise LookupError(f"no run {run_id}")
        config = replace(config, model=run.settings.get("model_path"))
    try:
        engine = open_engine(config, stop_loading=should_stop)
    except LoadStopped:
        return None
    try:
        if should_stop():
            return None
        with open_store(db_path) as store:
            run, style, settings = open_run(store, engine, settings, run_id=run_id)
            counts = generations_db.status_counts(store, run.id)
            on_started(
                Started(run.id, run.model, style.name, sum(counts.values()), sum(counts.values()) - counts["pending"])
            )
            return run_generation(
                store, engine, run, style, settings, on_progress=on_progress, should_stop=should_stop, on_piece=on_piece
            )
    finally:
        engine.close()
