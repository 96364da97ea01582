"""Generation: a resumable work queue in SQLite, one committed row per finished item.

The same functions serve `gristmill generate` and the review app. Each finished item is committed
at once; an interrupted run leaves its in-flight item pending, and the next call picks it up.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from gristmill import __version__
from gristmill.app.prompts import (
    BUILTIN_STYLES,
    Example,
    Style,
    StyleError,
    item_seed,
    load_style,
    style_digest,
    style_from_json,
    style_to_json,
)
from gristmill.app.scheduler import MAX_CONSECUTIVE_FAILURES, Progress, Scheduler  # noqa: F401 (re-exported)
from gristmill.db import Store
from gristmill.db import generations as generations_db
from gristmill.db import runs as runs_db
from gristmill.db.generations import WorkItem
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
    def from_run(cls, run: RunRecord) -> RunSettings:
        settings = run.settings
        return cls(
            style=settings["style"],
            samples=settings["samples"],
            params=GenerationParams.from_dict(settings["params"]),
            types=tuple(settings.get("types", ())),
            pool=settings.get("pool", "builtin"),
        )


def style_fingerprint(style: Style) -> str:
    """The fingerprint runs made before m006 were identified by (it includes the style's source path).

    Fields added since (`draws` when off, the bound `run_seed`) are left out, so the hash is the one they stored.
    """
    data = asdict(style)
    data.pop("run_seed")
    if not data["draws"]:
        data.pop("draws")
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def legacy_config_hash(engine: Engine, style: Style, settings: RunSettings) -> str:
    """How runs made before m006 were identified; used only to find them once and give them an identity."""
    info = engine.info()
    identity = {
        "engine": info.engine,
        "model": info.fingerprint,
        "add_bos": info.add_bos,
        "n_ctx": info.n_ctx,
        "style": style_fingerprint(style),
        "settings": settings.to_dict(),
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def canonical_settings(settings: RunSettings) -> dict:
    """What can change an output, written one way: `temperature = 1` and `--temperature 1.0` are one value,
    the order of stops and types does not count, and the style is its content, never its file name."""
    params = settings.params.to_dict()
    for name, value in GenerationParams().to_dict().items():
        if isinstance(value, float) and isinstance(params.get(name), (int, float)):
            params[name] = float(params[name])
    params["stop"] = sorted(set(params["stop"]))
    return {
        "samples": int(settings.samples),
        "params": params,
        "types": sorted(set(settings.types)),
        "pool": settings.pool,
    }


def config_hash(engine: Engine, style: Style, settings: RunSettings) -> str:
    """A run's identity: engine, model weights, BOS rule, style content and canonical sampling settings.

    Settings that cannot change an output (context size, threads, batch size, GPU layers) are not part
    of it: they are recorded on the run (`runs.settings["engine"]`). A prompt too long for one context
    is refused, never cut, so a larger context changes only which items are refused: --retry-refused.
    """
    info = engine.info()
    identity = {
        "engine": info.engine,
        "model": info.fingerprint,
        "add_bos": bool(info.add_bos),
        "style": style_digest(style),
        "settings": canonical_settings(settings),
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def open_run(
    store: Store,
    engine: Engine,
    settings: RunSettings,
    *,
    run_id: int | None = None,
    new_run: bool = False,
    engine_settings: dict | None = None,
) -> tuple[RunRecord, Style, RunSettings]:
    """Continue `run_id` with its own settings, else the run with this identity, else a new one.

    A run from before m006 is found by its old config hash and given its identity. Then enqueue every
    (instruction, sample) the run lacks, so instructions added since are included. `engine_settings`
    (n_ctx, threads, GPU layers, batch) are recorded on the run as last used.
    """
    info = engine.info()
    if run_id is not None:
        run = runs_db.get(store, run_id)
        if run is None:
            raise LookupError(f"no run {run_id}")
        settings = RunSettings.from_run(run)
        style = run_style(run)
        if run.model_fingerprint != info.fingerprint:
            if run.engine == "remote" and info.engine != "remote":  # its fingerprint names a server and tokenizer
                servers = run.settings.get("model_path") or "its server"
                raise LookupError(
                    f"run {run_id} was generated on a server ({servers}, model {run.model}); continue it with "
                    "--server URL and --tokenizer PATH, as it was made"
                )
            raise LookupError(
                f"run {run_id} used model {run.model} ({run.model_fingerprint}); load that model to continue it"
            )
        stored_bos = run_add_bos(run)
        if stored_bos is not None and stored_bos != info.add_bos:
            raise LookupError(
                f"run {run_id} was fed {'with' if stored_bos else 'without'} BOS; continue it with "
                f"{'--add-bos' if stored_bos else '--no-add-bos'} (or leave the option out)"
            )
    else:
        style = load_style(settings.style)
        digest = config_hash(engine, style, settings)
        run = None if new_run else runs_db.find_by_identity(store, digest)
        if run is None and not new_run:
            legacy = runs_db.find_by_config(store, legacy_config_hash(engine, style, settings))
            if legacy is not None and legacy.identity is None:
                run = runs_db.adopt(store, legacy.id, digest)
        if run is None:
            run = runs_db.create(
                store,
                engine=info.engine,
                model=info.name,
                model_fingerprint=info.fingerprint,
                style=style.name,
                params={
                    **settings.params.to_dict(),
                    "add_bos": info.add_bos,
                    "n_ctx": info.n_ctx,
                    "samples": settings.samples,
                },
                seed=settings.params.seed,
                samples=settings.samples,
                settings={
                    **settings.to_dict(),
                    "model_path": info.path,
                    "style_digest": style_digest(style),
                    # a remote run's ids are its tokenizer's: export --format tokens checks a tokenizer against it
                    **({"tokenizer_fingerprint": tok} if (tok := info.metadata.get("tokenizer_fingerprint")) else {}),
                },
                config_hash=digest,
                version=__version__,
                style_definition=style_to_json(style),
                identity=digest,
                new_run=new_run,
            )
        style = run_style(run)
        settings = RunSettings.from_run(run)
    if engine_settings is not None and run.settings.get("engine") != engine_settings:
        runs_db.record_settings(store, run.id, engine=engine_settings)
    added = generations_db.enqueue(
        store,
        run.id,
        settings.samples,
        lambda content_hash, k: item_seed(run.seed, content_hash, k),
        list(settings.types) or None,
    )
    if added and run.finished_at:
        runs_db.mark_finished(store, run.id, False)
    return run, style, settings


def run_add_bos(run: RunRecord) -> bool | None:
    """Whether the run's prompts were fed with BOS (None for a run that did not record it)."""
    value = run.params.get("add_bos")
    return None if value is None else bool(value)


def options_the_run_overrides(run: RunRecord, typed: dict[str, object]) -> list[str]:
    """Which of the options given with `--run` differ from the run's own settings (those are what it continues
    with: one run never mixes two settings), each as `--name value (the run's: value)`. None means not given."""
    stored = RunSettings.from_run(run)
    params = stored.params
    own: dict[str, object] = {
        "style": stored.style,
        "samples": stored.samples,
        "pool": stored.pool,
        "types": sorted(set(stored.types)),
        "max_tokens": params.max_tokens,
        "temperature": params.temperature,
        "top_p": params.top_p,
        "seed": params.seed,
        "stop": sorted(set(params.stop)),
    }
    differing = []
    for name, value in typed.items():
        if value is None:
            continue
        given = sorted(set(value)) if isinstance(value, (list, tuple)) else value
        if given != own[name] and not (name == "style" and _same_style(run, str(given))):
            differing.append(f"--{name.replace('_', '-')} {_shown(given)} (the run's: {_shown(own[name])})")
    return differing


def _shown(value: object) -> str:
    """A setting as a user writes it: a list as its quoted items (`'a', 'b'`), an empty one as `none`."""
    if isinstance(value, list):
        return ", ".join(repr(v) for v in value) or "none"
    return str(value)


def _same_style(run: RunRecord, typed: str) -> bool:
    """`--style ./s.toml` names the run's `s.toml` if it is the same file, or says the same as the run's style."""
    stored = str(run.settings.get("style", run.style))
    if Path(typed).is_file() and Path(stored).is_file() and Path(typed).resolve() == Path(stored).resolve():
        return True
    try:
        return style_digest(load_style(typed)) == style_digest(run_style(run))
    except StyleError:
        return False


def style_file_drift(run: RunRecord, given: str | None = None) -> str | None:
    """A warning when the run's style came from a file that now says something else (or is gone).

    `given`: the `--style` typed with `--run` (it names the same style, or it was refused), looked at instead of
    the path the run recorded, which is relative to where the run began. The run keeps generating with its
    stored style: one run never mixes two styles.
    """
    name = given or run.settings.get("style", run.style)
    if not run.style_definition or name in BUILTIN_STYLES:
        return None
    try:
        on_disk = load_style(name)
    except (StyleError, OSError):
        where = "" if Path(name).is_absolute() else f" from {Path.cwd()}"
        return f"style file {name} does not load{where}; run {run.id} continues with the style stored on it"
    if style_digest(on_disk) != style_digest(run_style(run)):
        return (
            f"style file {name} has changed since run {run.id} started; the run continues with the style "
            f"stored on it (run `generate --style {name}` without --run for a run with the new file)"
        )
    return None


def run_style(run: RunRecord) -> Style:
    """The style a run was made with: its stored content, or (runs from before m004) its name or path."""
    if run.style_definition:
        return style_from_json(run.style_definition, source=f"run {run.id}").for_run(run.seed)
    return load_style(run.settings.get("style", run.style)).for_run(run.seed)


def run_generation(
    store: Store,
    engine: Engine,
    run: RunRecord,
    style: Style,
    settings: RunSettings,
    *,
    limit: int | None = None,
    retry_failed: bool = False,
    retry_refused: bool = False,
    on_progress: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    on_piece: Callable[[str], None] | None = None,
    concurrent: ConcurrentEngine | None = None,
    prefix_order: bool = True,
) -> Progress:
    """Work through the run's queue; every outcome is committed the moment it exists.

    `concurrent` advances several sequences at once (`--batch N`, remote servers); without it the plain
    engine runs one sequence at a time behind the same scheduler, in id order.
    """
    examples_by_type: dict[str, list[tuple[int, Example]]] = {}

    def extra(item: WorkItem) -> Sequence[Example]:
        return _accepted_pool(store, item, examples_by_type) if settings.pool == "accepted" else ()

    style = style.for_run(run.seed)  # shared few-shot draws are seeded from the run seed, whoever loaded the style
    concurrent = concurrent or SerialSequences(engine)
    # one sequence at a time runs in id order, as it always did; reordering pays only with several in flight
    prefix_order = prefix_order and concurrent.capacity > 1
    scheduler = Scheduler(
        store,
        engine,
        concurrent,
        run,
        style,
        settings,
        limit=limit,
        retry_failed=retry_failed,
        retry_refused=retry_refused,
        on_progress=on_progress,
        should_stop=should_stop,
        on_piece=on_piece,
        prefix_order=prefix_order,
        extra_examples=extra,
    )
    state = scheduler.run()
    if generations_db.status_counts(store, run.id)["pending"] == 0:
        runs_db.mark_finished(store, run.id, True)
    return state


def _accepted_pool(store: Store, item: WorkItem, cache: dict[str, list[tuple[int, Example]]]) -> list[Example]:
    """Accepted records of the item's type as extra few-shot examples, never the item's own instruction.

    An example that answers the very instruction being generated would leak the answer into the prompt.
    Each example's id (`accepted-<generation id>`) is recorded in `style_meta["examples"]` when drawn.
    """
    if item.instruction_type not in cache:
        cache[item.instruction_type] = [
            (
                iid,
                Example(
                    id=f"accepted-{gid}", instruction=ins, input=inp or "", response=resp, type=item.instruction_type
                ),
            )
            for gid, iid, ins, inp, resp in generations_db.accepted_examples(store, item.instruction_type)
        ]
    return [example for iid, example in cache[item.instruction_type] if iid != item.instruction_id]
