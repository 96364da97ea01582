"""Generation: a resumable work queue in SQLite, one committed row per finished item.

The same functions serve `gristmill generate` and the review app. Each finished item is committed
at once; an interrupted run leaves its in-flight item pending, and the next call picks it up.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from gristmill import __version__
from gristmill.app.prompts import Example, Style, item_seed, load_style, style_from_json, style_to_json
from gristmill.app.scheduler import MAX_CONSECUTIVE_FAILURES, Progress, Scheduler  # noqa: F401 (re-exported)
from gristmill.db import Store
from gristmill.db import generations as generations_db
from gristmill.db import runs as runs_db
from gristmill.db.runs import RunRecord
from gristmill.models import Engine, GenerationParams
from gristmill.models.batch import ConcurrentEngine, SerialSequences


@dataclass(frozen=True)
class RunSettings:
    """What identifies a run: the same settings on the same model resume the same run."""

    style: str = "completion"
    samples: int = 1
    params: GenerationParams = field(default_factory=GenerationParams)
    types: tuple[str, ...] = ()
    pool: str = "builtin"  # or "accepted": add accepted records of the item's type to the few-shot pool

    def to_dict(self) -> dict:
        data = asdict(self)
        data["params"] = self.params.to_dict()
        data["types"] = list(self.types)
        return data

    @classmethod
    def from_run(cls, run: RunRecord) -> "RunSettings":
        settings = run.settings
        return cls(style=settings["style"], samples=settings["samples"],
                   params=GenerationParams.from_dict(settings["params"]), types=tuple(settings.get("types", ())),
                   pool=settings.get("pool", "builtin"))


def style_fingerprint(style: Style) -> str:
    return hashlib.sha256(json.dumps(asdict(style), sort_keys=True, default=str).encode()).hexdigest()[:16]


def config_hash(engine: Engine, style: Style, settings: RunSettings) -> str:
    info = engine.info()
    identity = {"engine": info.engine, "model": info.fingerprint, "add_bos": info.add_bos, "n_ctx": info.n_ctx,
                "style": style_fingerprint(style), "settings": settings.to_dict()}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def open_run(store: Store, engine: Engine, settings: RunSettings, *, run_id: int | None = None,
             new_run: bool = False) -> tuple[RunRecord, Style, RunSettings]:
    """Continue `run_id` with its own settings, else the run with these exact settings, else a new one.

    Then enqueue every (instruction, sample) the run lacks, so instructions added since are included.
    """
    if run_id is not None:
        run = runs_db.get(store, run_id)
        if run is None:
            raise LookupError(f"no run {run_id}")
        settings = RunSettings.from_run(run)
        style = run_style(run)
        if run.model_fingerprint != engine.info().fingerprint:
            raise LookupError(f"run {run_id} used model {run.model} ({run.model_fingerprint}); "
                              f"load that model to continue it")
    else:
        style = load_style(settings.style)
        digest = config_hash(engine, style, settings)
        run = None if new_run else runs_db.find_by_config(store, digest)
        if run is not None:
            style = run_style(run)
        else:
            info = engine.info()
            run = runs_db.create(
                store, engine=info.engine, model=info.name, model_fingerprint=info.fingerprint,
                style=style.name, params={**settings.params.to_dict(), "add_bos": info.add_bos,
                                          "n_ctx": info.n_ctx, "samples": settings.samples},
                seed=settings.params.seed, samples=settings.samples,
                settings={**settings.to_dict(), "model_path": info.path, "style_fingerprint": style_fingerprint(style)},
                config_hash=digest, version=__version__, style_definition=style_to_json(style),
            )
    added = generations_db.enqueue(store, run.id, settings.samples,
                                   lambda content_hash, k: item_seed(run.seed, content_hash, k),
                                   list(settings.types) or None)
    if added and run.finished_at:
        runs_db.mark_finished(store, run.id, False)
    return run, style, settings


def run_style(run: RunRecord) -> Style:
    """The style a run was made with: its stored content, or (runs from before m004) its name or path."""
    if run.style_definition:
        return style_from_json(run.style_definition, source=f"run {run.id}")
    return load_style(run.settings.get("style", run.style))


def run_generation(store: Store, engine: Engine, run: RunRecord, style: Style, settings: RunSettings, *,
                   limit: int | None = None, retry_failed: bool = False,
                   on_progress: Callable[[Progress], None] | None = None,
                   should_stop: Callable[[], bool] = lambda: False,
                   on_piece: Callable[[str], None] | None = None,
                   concurrent: ConcurrentEngine | None = None, prefix_order: bool = True) -> Progress:
    """Work through the run's queue; every outcome is committed the moment it exists.

    `concurrent` advances several sequences at once (`--batch N`, remote servers); without it the plain
    engine runs one sequence at a time behind the same scheduler.
    """
    examples_by_type: dict[str, list[Example]] = {}

    def extra(item):
        return _accepted_pool(store, item.instruction_type, examples_by_type) if settings.pool == "accepted" else ()

    scheduler = Scheduler(store, engine, concurrent or SerialSequences(engine), run, style, settings, limit=limit,
                          retry_failed=retry_failed, on_progress=on_progress, should_stop=should_stop,
                          on_piece=on_piece, prefix_order=prefix_order, extra_examples=extra)
    state = scheduler.run()
    if generations_db.status_counts(store, run.id)["pending"] == 0:
        runs_db.mark_finished(store, run.id, True)
    return state


def _accepted_pool(store: Store, instruction_type: str, cache: dict[str, list[Example]]) -> list[Example]:
    if instruction_type not in cache:
        cache[instruction_type] = [
            Example(id=f"accepted-{gid}", instruction=ins, input=inp or "", response=resp, type=instruction_type)
            for gid, ins, inp, resp in generations_db.accepted_examples(store, instruction_type)
        ]
    return cache[instruction_type]
