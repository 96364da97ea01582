"""The command line's two consoles, in a module of their own so that any command module can import them
without importing the whole command line first (which imports the command modules: a cycle)."""

from __future__ import annotations

from rich.console import Console

out = Console(highlight=False, soft_wrap=True)  # never wrap: lines are read by scripts
err = Console(stderr=True, highlight=False, soft_wrap=True)
