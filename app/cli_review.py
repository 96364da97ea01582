"""`gristmill review`: the Textual review app."""

from __future__ import annotations

import asyncio
import getpass
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any, Optional

import typer

from gristmill.app.cli import State, app, open_db
from gristmill.app.errors import BadInput, Interrupted, RuntimeFailure, note_terminated


@app.command()
def review(
    reviewer: Annotated[
        Optional[str], typer.Option(help="Name recorded with each decision (default: config, then login).")
    ] = None,
) -> None:
    """Open the review app (bare `gristmill` opens it too)."""
    open_db().close()  # an existing database only: reviewing a typo'd path creates nothing
    from gristmill.app.tui.keymap import keymap_problem

    if problem := keymap_problem(State.config.keymap):
        raise BadInput(f"config {State.config_path}: {problem}")
    not_terminals = not_a_terminal()
    if not_terminals:
        raise BadInput(
            f"review: the review app needs a terminal ({', '.join(not_terminals)} "
            f"{'is not one' if len(not_terminals) == 1 else 'are not'}); "
            "in scripts use `gristmill stats` or `gristmill export`"
        )
    if os.environ.get("TERM", "") in ("dumb", "unknown"):  # no cursor addressing: the app's escapes would be text
        raise BadInput(
            f"review: TERM={os.environ['TERM']} cannot draw the review app; set TERM to your terminal's type "
            "(e.g. TERM=xterm-256color)"
        )
    from gristmill.app.crash import guard_app
    from gristmill.app.tui.app import make_app

    name = reviewer or State.config.review.reviewer or _login()
    app_ = make_app(
        State.db_path,
        reviewer=name,
        keymap=State.config.keymap,
        reject_reasons=State.config.review.reject_reasons,
        generate_config=State.config.generate,
    )
    failure = guard_app(app_)
    with _interrupt_quits(app_) as interrupted:
        app_.run()
    if failure:
        raise failure[0]
    if interrupted:
        raise Interrupted(
            "interrupted: every decision made is saved"
            + (f" except the last {app_.unsaved}, which was waiting for the database" if app_.unsaved else "")
        )
    if app_.unsaved:  # the reviewer quit while it waited for another process's write lock (the app warned)
        raise RuntimeFailure(
            f"review: the last {app_.unsaved} was not saved: the database was busy when you quit; "
            "every decision before it is saved"
        )


@contextmanager
def _interrupt_quits(app_: Any) -> Iterator[list[int]]:
    """A SIGINT (`kill -INT`; the app reads Ctrl-C as a key) or a SIGTERM quits the app as `q` would, and is then
    reported as an interrupt (exit 130): asyncio's own handler made the app end with exit 0 and no word."""
    received: list[int] = []

    def quit_app(signum: int, _frame: object) -> None:
        received.append(signum)
        if signum == signal.SIGTERM:
            note_terminated()  # exit 143, as for any command a SIGTERM stops
        try:  # wake the event loop, as asyncio's own handler does: a bare exit() waited for some timer to fire
            asyncio.get_running_loop().call_soon_threadsafe(app_.exit)
        except RuntimeError:  # before the app's loop runs, or after
            app_.exit()

    previous = {signum: signal.signal(signum, quit_app) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def not_a_terminal() -> list[str]:
    """The standard streams that are not a terminal: the app reads keys from stdin, draws on stderr (Textual's
    driver), and is sized from stdout."""
    return [name for name in ("stdin", "stdout", "stderr") if not getattr(sys, name).isatty()]


def _login() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no login name (a container with an unknown uid): decisions still need a name
        return "reviewer"
