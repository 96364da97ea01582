"""`gristmill review`: the Textual review app."""

from __future__ import annotations

import getpass
from typing import Annotated, Optional

import typer

from gristmill.app.cli import State, app


@app.command()
def review(
    reviewer: Annotated[Optional[str], typer.Option(help="Name recorded with each decision (default: config, then login).")] = None,
) -> None:
    """Open the review app (bare `gristmill` opens it too)."""
    from gristmill.app.tui.app import make_app

    name = reviewer or State.config.review.reviewer or getpass.getuser()
    make_app(State.db_path, reviewer=name, keymap=State.config.keymap, generate_config=State.config.generate).run()
