"""`gristmill generate`: headless, resumable generation with a progress bar."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer
from rich.markup import escape

from gristmill.app.cli import State, app, open_db
from gristmill.app.consoles import err, out
from gristmill.app.cli_progress import drive, fingerprint_with_progress, say_waiting, summary
from gristmill.app.config import BOUNDS, GenerateConfig, check_generate
from gristmill.app.errors import BadInput, Interrupted, RuntimeFailure

if TYPE_CHECKING:
    from gristmill.db import Store


def _merged_config(**overrides: Any) -> GenerateConfig:
    return replace(State.config.generate, **{k: v for k, v in overrides.items() if v is not None})


def _low(key: str) -> Any:
    return BOUNDS[key][0]


def _high(key: str) -> Any:
    return BOUNDS[key][1]


def _default(key: str) -> str:
    """What the option is when neither the command line nor gristmill.toml gives it, for --help."""
    return f"default {getattr(GenerateConfig(), key)}"


@app.command()
def generate(
    model: Annotated[
        Optional[str],
        typer.Option(metavar="GGUF", help="GGUF file (first part of a split model). Default: the embedded base model."),
    ] = None,
    style: Annotated[
        Optional[str],
        typer.Option(metavar="STYLE", help="completion (default), few-shot, urial, or a style TOML file."),
    ] = None,
    samples: Annotated[
        Optional[int],
        typer.Option(
            min=_low("samples"),
            max=_high("samples"),
            metavar="N",
            help=f"Completions per instruction ({_default('samples')}).",
        ),
    ] = None,
    max_tokens: Annotated[
        Optional[int],
        typer.Option(
            min=_low("max_tokens"),
            max=_high("max_tokens"),
            metavar="N",
            help=f"Tokens an answer may have at most ({_default('max_tokens')}).",
        ),
    ] = None,
    temperature: Annotated[
        Optional[float],
        typer.Option(min=_low("temperature"), metavar="T", help=f"Sampling temperature ({_default('temperature')})."),
    ] = None,
    top_p: Annotated[
        Optional[float],
        typer.Option(  # no typer range: it would show 0 as allowed, and 0 keeps no token (the config says so)
            metavar="P", help=f"Nucleus sampling: above 0, at most 1 ({_default('top_p')})."
        ),
    ] = None,
    seed: Annotated[
        Optional[int],
        typer.Option(
            min=_low("seed"),
            max=_high("seed"),
            metavar="N",
            help=f"Run seed; each item's seed derives from it ({_default('seed')}).",
        ),
    ] = None,
    stop: Annotated[Optional[list[str]], typer.Option(metavar="TEXT", help="Extra stop string (repeatable).")] = None,
    limit: Annotated[
        Optional[int], typer.Option(min=1, max=_high("seed"), metavar="N", help="Generate at most this many items now.")
    ] = None,
    types: Annotated[
        Optional[list[str]],
        typer.Option(metavar="TYPES", help="Only these instruction types (comma-separated, or the option repeated)."),
    ] = None,
    threads: Annotated[
        Optional[int],
        typer.Option(
            min=_low("threads"), max=_high("threads"), metavar="N", help="CPU threads (default: llama.cpp's choice)."
        ),
    ] = None,
    batch: Annotated[
        Optional[int],
        typer.Option(
            min=_low("batch"),
            max=_high("batch"),
            metavar="N",
            help=f"Sequences decoded together in-process, 1: one at a time ({_default('batch')}).",
        ),
    ] = None,
    gpu_layers: Annotated[
        Optional[int],
        typer.Option(
            min=_low("gpu_layers"),
            max=_high("gpu_layers"),
            metavar="N",
            help=f"Layers to offload to the GPU, -1: all ({_default('gpu_layers')}).",
        ),
    ] = None,
    n_ctx: Annotated[
        Optional[int],
        typer.Option(
            min=_low("n_ctx"), max=_high("n_ctx"), metavar="N", help="Context size (default: the model's, capped)."
        ),
    ] = None,
    flash_attn: Annotated[
        Optional[bool],
        typer.Option("--flash-attn/--no-flash-attn", help="llama.cpp's flash attention (default on: faster batches)."),
    ] = None,
    add_bos: Annotated[
        Optional[bool], typer.Option("--add-bos/--no-add-bos", help="Override the GGUF's BOS rule.")
    ] = None,
    pool: Annotated[
        Optional[str],
        typer.Option(metavar="POOL", help="Few-shot pool: builtin (default), or accepted (adds accepted records)."),
    ] = None,
    run: Annotated[
        Optional[int],
        typer.Option("--run", min=1, max=_high("seed"), metavar="ID", help="Continue this run with its own settings."),
    ] = None,
    new_run: Annotated[
        bool, typer.Option("--new-run", help="Start a new run even if one with these settings exists.")
    ] = False,
    retry_failed: Annotated[bool, typer.Option("--retry-failed", help="Retry items that failed.")] = False,
    retry_refused: Annotated[
        bool,
        typer.Option(
            "--retry-refused",
            help="Retry items refused as too long for the context, with the context now given, in the same run.",
        ),
    ] = False,
    server: Annotated[
        Optional[list[str]],
        typer.Option(
            "--server",
            metavar="URL",
            help="llama-server or vLLM base URL (repeatable): generate there through raw /v1/completions.",
        ),
    ] = None,
    tokenizer: Annotated[
        Optional[str],
        typer.Option(
            metavar="PATH",
            help="With --server: the served model's GGUF (vocab only) or tokenizer.json. Default: --model, if given.",
        ),
    ] = None,
    concurrency: Annotated[
        Optional[int],
        typer.Option(
            min=_low("concurrency"),
            max=_high("concurrency"),
            metavar="N",
            help=f"With --server: requests in flight per server ({_default('concurrency')}).",
        ),
    ] = None,
    server_kind: Annotated[
        Optional[str],
        typer.Option(metavar="KIND", help="llama-server or vllm (default: detected from GET /v1/models)."),
    ] = None,
    api_key_env: Annotated[
        Optional[str],
        typer.Option(
            metavar="NAME",
            help="Name of the environment variable holding the API key (default GRISTMILL_API_KEY); sent as Authorization: Bearer.",
        ),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="Log lines instead of a progress bar.")] = False,
) -> None:
    """Generate completions for every instruction the run lacks; safe to interrupt and re-run."""
    # Failures are raised, never caught here: the command line's one boundary reports them.
    from gristmill.app.engines import open_concurrent, open_engine
    from gristmill.app.generate import open_run, style_file_drift
    from gristmill.app.generate_session import settings_for
    from gristmill.app.prompts import StyleError, load_style_for_pool
    from gristmill.models import EngineError

    typed_types = ",".join(types) if types else None  # repeated, the option had kept only its last value
    type_list = sorted({t.strip().lower() for t in typed_types.split(",") if t.strip()}) if typed_types else []
    if types and not type_list:  # `--types ''` had meant every type
        raise BadInput(f"generate: --types {typed_types!r} names no type; give comma-separated types, or leave it out")
    if run is not None and new_run:
        raise BadInput("generate: --run N continues run N and --new-run starts another: give one of them")
    if run is not None:  # the run's own BOS rule and model, unless the user names them; its own settings, always
        typed: dict[str, object] = {
            "style": style, "samples": samples, "pool": pool, "types": type_list if types is not None else None,
            "max_tokens": max_tokens, "temperature": temperature, "top_p": top_p, "seed": seed, "stop": stop,
        }  # fmt: skip
        model, add_bos = _continued_run_options(run, model, add_bos, typed)
    config = _merged_config(
        model=model,
        style=style,
        samples=samples,
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        seed=seed,
        stop=stop,
        threads=threads,
        gpu_layers=gpu_layers,
        flash_attn=flash_attn,
        n_ctx=n_ctx,
        add_bos=add_bos,
        pool=pool,
        batch=batch,
        server=server,
        tokenizer=tokenizer,
        concurrency=concurrency,
        server_kind=server_kind,
        api_key_env=api_key_env,
    )
    check_generate(config, lambda key: f"generate: --{key.replace('_', '-')} (or generate.{key} in the config)")
    if config.server:  # an option that would change nothing is refused, never silently dropped
        _refuse_unused(
            {"--batch": batch, "--threads": threads, "--gpu-layers": gpu_layers, "--n-ctx": n_ctx,
             "--flash-attn/--no-flash-attn": flash_attn},
            "the in-process engine",
            "with --server the server's own settings apply (--concurrency sets requests in flight)",
        )  # fmt: skip
    else:
        _refuse_unused(
            {"--tokenizer": tokenizer, "--concurrency": concurrency, "--server-kind": server_kind,
             "--api-key-env": api_key_env},
            "--server, which was not given",
            "without it the model runs in this process",
        )  # fmt: skip
    try:
        settings = settings_for(config)  # the same RunSettings the app's generate room builds
    except ValueError as error:
        raise BadInput(f"generate: {error}") from error
    if run is None:  # a bad style file is bad input: say so before loading a model, and where the name came from
        try:
            load_style_for_pool(config.style, config.pool)
        except StyleError as error:
            origin = "" if style is not None else f" (generate.style in {State.config_path})"
            raise BadInput(f"{error}{origin}") from error
    settings = replace(settings, types=tuple(type_list))
    store = open_db()  # an existing database only: `add` makes one; a typo in --db creates nothing
    store.on_busy = say_waiting
    run_record = None
    try:
        _check_types(store, type_list)
        engine = open_engine(config)
        concurrent = None
        try:
            try:
                concurrent = open_concurrent(engine, config.batch)
            except EngineError as error:
                raise BadInput(f"generate: {error}") from error
            fingerprint_with_progress(engine, quiet)
            try:
                run_record, style_obj, settings = open_run(
                    store,
                    engine,
                    settings,
                    run_id=run,
                    new_run=new_run,
                    engine_settings={
                        "n_ctx": engine.info().n_ctx,
                        **(
                            {"concurrency": config.concurrency, "in_flight": concurrent.capacity}
                            if config.server  # the servers' own settings apply; _record_servers keeps what they said
                            else {
                                "threads": config.threads,
                                "gpu_layers": config.gpu_layers,
                                "flash_attn": config.flash_attn,
                                "batch": concurrent.capacity,
                            }
                        ),
                    },
                )
            except LookupError as error:
                if type(error) is not LookupError:  # a KeyError or IndexError is a bug, not a missing run
                    raise
                raise BadInput(f"generate: {error.args[0] if error.args else error}") from error
            except StyleError as error:
                raise BadInput(f"generate: run {run}: its style no longer loads: {error}") from error
            drift = style_file_drift(run_record, style) if run is not None else None
            if drift:
                err.print(f"[yellow]note:[/] {escape(drift)}")
            out.print(
                f"run {run_record.id}: style {escape(style_obj.name)}, model {escape(run_record.model)}, "
                f"{settings.samples} sample(s) per instruction, seed {run_record.seed}, "
                f"{'in flight' if config.server else 'batch'} {concurrent.capacity}"
            )
            _record_servers(store, engine, run_record.id)
            final = drive(
                store, engine, concurrent, run_record, style_obj, settings, limit, retry_failed, retry_refused, quiet
            )
        except KeyboardInterrupt:
            if run_record is not None:
                summary(store, run_record.id)
            raise Interrupted(
                f"interrupted: every finished item is saved; {_resume_hint(run_record, new_run)}"
            ) from None
        except RuntimeError as error:  # too many failures in a row, a server gone
            if run_record is not None:
                summary(store, run_record.id)
            raise RuntimeFailure(
                f"generate stopped: {error}; every finished item is saved; {_resume_hint(run_record, new_run)} "
                "(--retry-failed runs the failed items again)"
            ) from error
        finally:
            if concurrent is not None and concurrent is not engine:
                concurrent.close()
            engine.close()
        summary(store, run_record.id, final)
        from gristmill.db import generations as generations_db

        failed = generations_db.status_counts(store, run_record.id)["failed"]
        if failed:  # a script that goes on to export must hear that the run is not whole
            raise RuntimeFailure(
                f"generate: {failed} item(s) of run {run_record.id} failed (the reason of each is in "
                "generations.error); --retry-failed runs them again"
            )
    finally:
        store.close()


def _resume_hint(run_record, new_run: bool) -> str:
    """The command that goes on with this run: a `--new-run` is not found again by the same command."""
    if run_record is not None and new_run:
        return f"--run {run_record.id} resumes it (the same command would start another run)"
    return "run the same command to resume"


def _refuse_unused(options: dict[str, object], meant_for: str, why: str) -> None:
    """The options given of those that do nothing in this mode (in-process or `--server`): one line naming them."""
    given = [name for name, value in options.items() if value is not None]
    if given:
        one = len(given) == 1
        raise BadInput(
            f"generate: {', '.join(given)} {'is' if one else 'are'} for {meant_for}: {why}; "
            f"leave {'it' if one else 'them'} out"
        )


def _check_types(store: Store, type_list: list[str]) -> None:
    """A `--types` value no instruction has is a typo or the wrong database: it would make an empty run."""
    from gristmill.db import instructions as instructions_db

    if not type_list:
        return
    present = instructions_db.types(store)
    missing = [t for t in type_list if t not in present]
    if missing:
        raise BadInput(
            f"generate: --types: no instruction has type {', '.join(map(repr, missing))} "
            f"(the database's types: {', '.join(present) or 'none: it has no instructions'})"
        )


def _continued_run_options(
    run_id: int, model: str | None, add_bos: bool | None, typed: dict[str, object]
) -> tuple[str | None, bool | None]:
    """`--run N` loads the run's model file and feeds BOS by the run's rule, unless told otherwise. It generates
    with the run's own style and sampling settings: one typed with another value is refused, never ignored."""
    from pathlib import Path

    from gristmill.app.generate import options_the_run_overrides, run_add_bos
    from gristmill.db import runs as runs_db

    with open_db() as store:
        record = runs_db.get(store, run_id)
    if record is None:
        raise BadInput(f"generate: no run {run_id}")
    differing = options_the_run_overrides(record, typed)
    if differing:
        raise BadInput(
            f"generate: --run {run_id} continues the run with its own settings, and these differ: "
            f"{'; '.join(differing)}. Leave them out to continue it, or leave out --run to start or resume the "
            "run with these settings"
        )
    stored_path = record.settings.get("model_path")
    if model is None and State.config.generate.model is None and stored_path and Path(stored_path).exists():
        model = stored_path
    return model, run_add_bos(record) if add_bos is None else add_bos


def _record_servers(store, engine, run_id: int) -> None:
    """A remote run records its endpoints and their GET /v1/models answers (never the key: it is not in them)."""
    servers = getattr(engine, "servers", None)
    if servers is None:
        return
    from gristmill.db import runs as runs_db

    runs_db.record_servers(store, run_id, servers())
    for endpoint in servers():
        out.print(
            f"server {escape(endpoint['url'])}: {endpoint['kind']}, model {escape(str(endpoint['model']))}, "
            f"context {endpoint['n_ctx'] or '?'}, concurrency {endpoint['concurrency']}"
        )
