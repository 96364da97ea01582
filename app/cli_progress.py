"""What long commands show while they work: the model hash bar and the generation progress bar (log lines where
stderr is no terminal or with --quiet), the closing summary of a run (`generate`), and the waits for another
process's write lock (`generate`, `add`)."""

from __future__ import annotations

import time

from rich.console import RenderableType
from rich.constrain import Constrain
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from gristmill.app.consoles import err, out


_waiting_since: list[float] = []


def say_waiting(seconds: float | None) -> None:
    """Store.on_busy: one line when a write starts waiting for another process's lock, one when it lands."""
    if seconds is None:
        if _waiting_since:
            err.print("database free again: continuing")
            _waiting_since.clear()
    elif not _waiting_since and seconds >= 2:
        _waiting_since.append(seconds)
        err.print("database busy: another process holds the write lock; waiting (Ctrl-C stops, nothing is lost)")


MIN_BAR_COLUMNS = 60  # narrower, the bar's columns are cut to `generat… - tok… ET…`: log lines say it whole


def _lines_not_a_bar(quiet: bool) -> bool:
    """Progress as log lines: asked for, or stderr is a file or pipe, where Rich draws a bar only once it ends (a
    transient one, never), or a terminal too narrow for the bar."""
    return quiet or not err.is_terminal or err.width < MIN_BAR_COLUMNS


class _Bar(Progress):
    """A progress bar two columns short of the terminal's width: the terminal echoes Ctrl-C as `^C` after the
    bar, and on a full-width line that wraps, so the bar's last draw landed on a new line under a stale copy."""

    def get_renderable(self) -> RenderableType:
        renderable = super().get_renderable()
        live = getattr(self, "live", None)  # None while Progress.__init__ builds its Live
        return renderable if live is None else Constrain(renderable, width=max(live.console.width - 2, 1))


def fingerprint_with_progress(engine, quiet: bool) -> None:
    """A run is identified by the model's SHA-256: hash it once (cached), with a progress bar on a big file."""
    from pathlib import Path

    from gristmill.models.fingerprint import cached_fingerprint, fingerprint

    path = getattr(engine, "path", None)
    if path is None or cached_fingerprint(Path(path)) is not None:
        return
    if _lines_not_a_bar(quiet):
        out.print(f"hashing {escape(str(path))} once to identify the run (cached afterwards)")
        fingerprint(Path(path))
        return
    with _Bar(
        TextColumn("[bold]hashing model"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    ) as bar:
        task = bar.add_task("hash", total=None)
        fingerprint(Path(path), on_progress=lambda done, total: bar.update(task, completed=done, total=total))


STALLED_S = 30  # no item finished for this long, with items in flight: the progress line says so
LOG_EVERY_S = 5  # without a bar, a progress line at most this often (and at the end)


def _notes(engine, p) -> str:
    """Endpoints out of the rotation, and a stall, for the progress line (empty when all is well)."""
    pool = getattr(engine, "pool", None)
    out_of_rotation = pool.out_of_rotation() if pool is not None else []
    notes = f", out of rotation: {' '.join(out_of_rotation)}" if out_of_rotation else ""
    if pool is not None and (down := pool.down_for()):  # requests wait for a server to come back, up to a limit
        notes += f", no server for {down:.0f}s (waiting up to {pool.policy.outage_s:.0f}s)"
    if p.in_flight and p.idle_s >= STALLED_S:
        notes += f", {p.in_flight} in flight, none finished for {p.idle_s:.0f}s"
    return notes


def drive(store, engine, concurrent, run_record, style_obj, settings, limit, retry_failed, retry_refused, quiet):
    from functools import partial

    from gristmill.app.generate import run_generation
    from gristmill.db import generations as generations_db

    generate_all = partial(
        run_generation,
        store,
        engine,
        run_record,
        style_obj,
        settings,
        limit=limit,
        retry_failed=retry_failed,
        retry_refused=retry_refused,
        concurrent=concurrent,
    )
    counts = generations_db.status_counts(store, run_record.id)
    total = sum(counts.values())
    retried_refused = generations_db.length_refused_count(store, run_record.id) if retry_refused else 0
    already = total - counts["pending"] - (counts["failed"] if retry_failed else 0) - retried_refused
    if _lines_not_a_bar(quiet):
        last_log = [0.0]

        def log_progress(p):
            if time.monotonic() - last_log[0] >= LOG_EVERY_S or p.finished == p.total:
                last_log[0] = time.monotonic()
                eta = f"{p.eta_s:.0f}s" if p.eta_s is not None else "?"
                out.print(
                    f"{p.finished}/{p.total} ({p.done} done, {p.refused} refused, {p.failed} failed), "
                    f"{p.tokens_per_s:.1f} tok/s, ETA {eta}{escape(_notes(engine, p))}"
                )

        return generate_all(on_progress=log_progress)

    columns = (
        TextColumn("[bold]generating"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]} tok/s"),
        TextColumn("ETA {task.fields[eta]}"),
        TextColumn("refused {task.fields[refused]} failed {task.fields[failed]}{task.fields[rotation]}"),
        TimeElapsedColumn(),
    )
    with _Bar(*columns, console=err, transient=False) as bar:
        task = bar.add_task(
            "generate",
            total=total,
            completed=already,
            rate="-",
            eta="-",
            refused=counts["refused"] - retried_refused,
            failed=0 if retry_failed else counts["failed"],
            rotation="",
        )

        def show(p):
            eta = "-" if p.eta_s is None else f"{int(p.eta_s) // 60}:{int(p.eta_s) % 60:02d}"
            bar.update(
                task,
                completed=p.finished,
                rate=f"{p.tokens_per_s:.1f}",
                eta=eta,
                refused=p.refused,
                failed=p.failed,
                rotation=escape(_notes(engine, p)),
            )

        return generate_all(on_progress=show)


def summary(store, run_id: int, final=None) -> None:
    from gristmill.db import generations as generations_db

    counts = generations_db.status_counts(store, run_id)
    rate = f", {final.processed} by this process, {final.tokens_per_s:.1f} tok/s" if final and final.processed else ""
    out.print(
        f"run {run_id}: {counts['done']} done, {counts['refused']} refused, {counts['failed']} failed, "
        f"{counts['pending']} pending{rate}"
    )
    if held := generations_db.held_elsewhere(store, run_id):  # this process released its own claims
        processes = ", ".join(f"{owner} ({n})" for owner, n in sorted(held.items()))
        out.print(
            f"{sum(held.values())} item(s) held by another process generating this run now: {processes} (each "
            "item is generated once; what it leaves, this command takes when run again)"
        )
    if stranded := generations_db.pending_without_instruction(store, run_id):
        out.print(
            f"{stranded} pending item(s) cannot run: their instruction was deleted by hand (add it again, or delete "
            "those generations; `gristmill doctor` counts them)"
        )
    rewritten = generations_db.flag_counts(store, run_id, ("leaked", "control_token"))
    if rewritten["leaked"]:
        out.print(
            f"{rewritten['leaked']} trimmed where they ran into a next example their stops missed (flag leaked; "
            "the untrimmed text is in style_meta)"
        )
    if rewritten["control_token"]:
        out.print(
            f"{rewritten['control_token']} cut where the model sampled a control token (flag control_token; "
            "style_meta names it)"
        )
    if counts["refused"]:
        too_long = generations_db.length_refused_count(store, run_id)
        out.print("refused items are in the database with the reason (generations.error)")
        if too_long:
            from gristmill.db import runs as runs_db

            run = runs_db.get(store, run_id)
            larger = "the server a larger context" if run and run.engine == "remote" else "a larger --n-ctx"
            out.print(
                f"{too_long} refused as too long for the context: give {larger} and run with --retry-refused "
                f"to retry them in this run (run {run_id}; nothing else is regenerated)"
            )
