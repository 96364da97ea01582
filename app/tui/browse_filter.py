"""The browse filter: every field a choice among the values the database knows, lengths as numbers."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Select

from gristmill.app.browse import DECISIONS, FLAGS, STATUSES, BrowseFilter


def _select(options, value, prompt: str, widget_id: str) -> Select:
    return Select(options, value=value if value is not None else Select.NULL, prompt=prompt, id=widget_id)


class BrowseFilterScreen(ModalScreen[BrowseFilter | None]):
    CSS_PATH = "browse_filter.tcss"
    BINDINGS = [
        Binding("escape", "cancel", "Cancel", id="cancel_browse_filter"),
        Binding("ctrl+s", "apply", "Apply", id="apply_browse_filter"),
    ]

    def __init__(self, current: BrowseFilter, choices: dict[str, list]):
        super().__init__()
        self.current, self.choices = current, choices

    def compose(self) -> ComposeResult:
        c, k = self.current, self.choices
        with Vertical(id="browse-filter"):
            yield Label("Filter · enter in a number field or ctrl+s applies · escape cancels")
            with Horizontal():
                yield _select([(s, s) for s in STATUSES], c.status, "status (any)", "status")
                yield _select([(d, d) for d in DECISIONS], c.decision, "decision (any)", "decision")
            with Horizontal():
                yield _select([(t, t) for t in k.get("types", [])], c.instruction_type, "type (any)", "type")
                yield _select([(s, s) for s in k.get("styles", [])], c.style, "style (any)", "style")
            with Horizontal():
                yield _select([(f, f) for f in FLAGS], c.flag, "flag (any)", "flag")
                yield _select([(r, r) for r in k.get("reviewers", [])], c.reviewer, "reviewer (any)", "reviewer")
            with Horizontal():
                yield _select([(label, run_id) for run_id, label in k.get("runs", [])], c.run_id, "run (any)", "run")
                yield Input(
                    str(c.min_chars if c.min_chars is not None else ""),
                    placeholder="min chars",
                    type="integer",
                    id="min",
                )
                yield Input(
                    str(c.max_chars if c.max_chars is not None else ""),
                    placeholder="max chars",
                    type="integer",
                    id="max",
                )
            yield Button("Apply", variant="primary", id="apply")

    def value(self) -> BrowseFilter:
        def chosen(widget_id: str):
            value = self.query_one(f"#{widget_id}", Select).value
            return None if value is Select.NULL else value

        def number(widget_id: str) -> int | None:
            text = self.query_one(f"#{widget_id}", Input).value.strip()
            return int(text) if text.lstrip("-").isdigit() else None

        return BrowseFilter(
            status=chosen("status"),
            decision=chosen("decision"),
            instruction_type=chosen("type"),
            style=chosen("style"),
            flag=chosen("flag"),
            reviewer=chosen("reviewer"),
            run_id=chosen("run"),
            min_chars=number("min"),
            max_chars=number("max"),
            search=self.current.search,
        )

    def on_input_submitted(self) -> None:
        self.action_apply()

    def on_button_pressed(self) -> None:
        self.action_apply()

    def action_apply(self) -> None:
        self.dismiss(self.value())

    def action_cancel(self) -> None:
        self.dismiss(None)
