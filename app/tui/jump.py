"""Jump to a generation by its id (the number shown as #id everywhere)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label


class JumpScreen(ModalScreen[int | None]):
    CSS_PATH = "confirm.tcss"
    BINDINGS = [Binding("escape", "cancel", "Cancel", id="cancel_jump")]

    def compose(self) -> ComposeResult:
        with Vertical(id="confirm"):
            yield Label("Go to generation id · enter go · escape cancel")
            yield Input(placeholder="id, e.g. 1234", type="integer", id="jump-id")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        text = event.value.strip()
        self.dismiss(int(text) if text.isdigit() else None)

    def action_cancel(self) -> None:
        self.dismiss(None)
