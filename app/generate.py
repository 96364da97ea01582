"""Generation: a resumable work queue in SQLite, one committed row per finished item.

The same functions serve `gristmill generate` and the review app. Each finished item is committed
at once; an interrupted run leaves its in-flight item pending, and the next call picks it up.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace

from gristmill import __version__
from gristmill.app.flags import quality_flags, trim_leak
from gristmill.app.prompts import Example, Style, item_seed, load_style, style_from_json, style_to_json
from gristmill.db import Store
from gristmill.db import generations as generations_db
from gristmill.db import runs as runs_db
from gristmill.db.generations import Outcome, WorkItem
from gristmill.db.runs import RunRecord
from gristmill.models import Engine, GenerationParams, GenerationResult, PromptRefused, TextPiece
from gristmill.models.base import token_ids_sha256

MAX_CONSECUTIVE_FAILURES = 5


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


@dataclass(frozen=True)
class Progress:
    """Posted after every item; a UI may drop all but the latest."""

    run_id: int
    total: int
    done: int
    refused: int
    failed: int
    completion_tokens: int
    elapsed_s: float
    last_generation_id: int | None = None
    last_status: str | None = None
    processed: int = 0  # items finished by this call: the denominator of the rate and the ETA

    @property
    def finished(self) -> int:
        return self.done + self.refused + self.failed

    @property
    def tokens_per_s(self) -> float:
        return self.completion_tokens / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def eta_s(self) -> float | None:
        remaining = self.total - self.finished
        return None if self.elapsed_s <= 0 or self.processed == 0 else remaining * self.elapsed_s / self.processed


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


class Stopped(Exception):
    """A stop was asked for in the middle of an item: it stays pending, and the run resumes from it."""


def generate_one(engine: Engine, style: Style, item: WorkItem, params: GenerationParams,
                 extra_examples: Sequence[Example] = (),
                 on_piece: Callable[[str], None] | None = None,
                 should_stop: Callable[[], bool] | None = None) -> Outcome:
    """Render, tokenize, check and generate one item. The prompt stored is the text that was tokenized."""
    rendered = style.render(item.instruction, item.input, item.instruction_type, seed=item.seed,
                            extra_examples=extra_examples)
    ids = engine.tokenize(rendered.text)
    item_params = replace(params, seed=item.seed, stop=tuple(dict.fromkeys((*rendered.stop, *params.stop))))
    prompt_fields = dict(prompt=rendered.text, prompt_tokens=len(ids), prompt_token_ids_sha256=token_ids_sha256(ids),
                         style_meta=rendered.meta)
    try:
        engine.check_prompt(ids, item_params.max_tokens)
    except PromptRefused as refusal:
        return Outcome(status="refused", error=str(refusal), **prompt_fields)
    result: GenerationResult | None = None
    events = engine.stream(ids, item_params)
    try:
        for event in events:
            if should_stop is not None and should_stop():  # checked on every piece: a stop is never a wait
                raise Stopped()
            if isinstance(event, TextPiece):
                if on_piece:
                    on_piece(event.text)
            else:
                result = event
    finally:
        close = getattr(events, "close", None)
        if close is not None:
            close()
    assert result is not None
    text, leaked = trim_leak(result.text, item_params.stop)
    meta = dict(rendered.meta)
    if leaked:
        meta["untrimmed_completion"] = result.text
    return Outcome(
        status="done", completion=text, completion_tokens=result.completion_tokens,
        finish_reason=result.finish_reason, flags=tuple(quality_flags(text, result.finish_reason, leaked)),
        timings=result.timings, **{**prompt_fields, "style_meta": meta},
    )


def run_generation(store: Store, engine: Engine, run: RunRecord, style: Style, settings: RunSettings, *,
                   limit: int | None = None, retry_failed: bool = False,
                   on_progress: Callable[[Progress], None] | None = None,
                   should_stop: Callable[[], bool] = lambda: False,
                   on_piece: Callable[[str], None] | None = None) -> Progress:
    """Work through the run's queue; every outcome is committed before the next item starts."""
    counts = generations_db.status_counts(store, run.id)
    total = sum(counts.values())
    started = time.perf_counter()
    state = Progress(run.id, total, counts["done"], counts["refused"], counts["failed"], 0, 0.0)
    if retry_failed:
        state = replace(state, failed=0)
    examples_by_type: dict[str, list[Example]] = {}
    consecutive_failures = 0
    for item in generations_db.pending(store, run.id, retry_failed=retry_failed):
        if should_stop() or (limit is not None and state.processed >= limit):
            break
        extra = _accepted_pool(store, item.instruction_type, examples_by_type) if settings.pool == "accepted" else ()
        try:
            outcome = generate_one(engine, style, item, settings.params, extra, on_piece, should_stop)
            consecutive_failures = 0
        except Stopped:
            break  # the item in flight stays pending: nothing half-written, the next call resumes it
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as error:  # an engine error fails this item; the run goes on
            consecutive_failures += 1
            outcome = Outcome(status="failed", error=f"{type(error).__name__}: {error}")
        generations_db.finish(store, item.generation_id, outcome)
        state = replace(
            state,
            done=state.done + (outcome.status == "done"), refused=state.refused + (outcome.status == "refused"),
            failed=state.failed + (outcome.status == "failed"),
            completion_tokens=state.completion_tokens + (outcome.completion_tokens or 0),
            elapsed_s=time.perf_counter() - started, processed=state.processed + 1,
            last_generation_id=item.generation_id, last_status=outcome.status,
        )
        if on_progress:
            on_progress(state)
        if consecutive_failures >= MAX_CONSECUTIVE_FAILURES:
            raise RuntimeError(f"{consecutive_failures} items failed in a row; last error: {outcome.error}")
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
