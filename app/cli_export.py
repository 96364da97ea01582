"""`gristmill export`: accepted records to JSONL with a manifest."""

from __future__ import annotations

from gristmill.app.cli import app  # noqa: F401  (the export command registers here once it lands)
