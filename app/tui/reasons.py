"""The reject-reason picker: one key per reason (1-9, in the configured order), escape cancels.

Opened by the review screen's `reject_reason` binding; the reason it returns is stored on the reject's
review row, where `stats` and the `kto` export read it.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Label, OptionList
from textual.widgets.option_list import Option


class ReasonScreen(ModalScreen[str | None]):
    """Pick why an output is rejected: a digit, or arrows and enter. Dismisses with the reason key, or None."""

    CSS_PATH = "reasons.tcss"
    BINDINGS = [
        Binding("escape", "cancel", "Cancel", id="cancel_reason"),
        *[Binding(str(n), f"choose({n})", f"Reason {n}", id=f"reason_{n}", show=False) for n in range(1, 10)],
    ]

    def __init__(self, reasons: Sequence[str], generation_id: int):
        super().__init__()
        self.reasons = list(reasons)
        self.generation_id = generation_id

    def compose(self) -> ComposeResult:
        with Vertical(id="reason-dialog"):
            yield Label(f"Reject #{self.generation_id} because… (digit or enter; escape cancels)")
            yield OptionList(
                *[Option(Text(f"{n}  {reason}"), id=reason) for n, reason in enumerate(self.reasons, 1)], id="reasons"
            )

    def on_mount(self) -> None:
        self.query_one(OptionList).focus()

    def action_choose(self, n: int) -> None:
        if 1 <= n <= len(self.reasons):
            self.dismiss(self.reasons[n - 1])

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(event.option.id)

    def action_cancel(self) -> None:
        self.dismiss(None)
