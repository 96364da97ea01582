"""Small modal screens: help, edit, a read-only text (diff), and the queue filter."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widget import Widget
from textual.widgets import Button, Input, Label, Select, Static, TextArea

from gristmill.app.flags import ALL_FLAGS
from gristmill.app.textsafe import editable, from_editable, visible
from gristmill.app.tui.keyhints import typed
from gristmill.app.review import REVIEW_STATES, QueueFilter


def takes_enter_itself(focused: Widget | None) -> bool:
    """A dialog's Enter goes to a button (it presses), a text field (it submits) or an open list (its choice);
    anywhere else, a closed list or a checkbox included, Enter is the dialog's own (apply, export)."""
    return focused is not None and (isinstance(focused, (Button, Input)) or type(focused).__name__ == "SelectOverlay")


class HelpScreen(ModalScreen[None]):
    """Every binding of the screen below and of the app, with the keys in force (after any keymap)."""

    CSS_PATH = "modals.tcss"
    BINDINGS = [Binding("escape,q,question_mark", "dismiss", "Close", id="close_help")]

    def __init__(self, below: Screen):
        super().__init__()
        self.below = below

    def compose(self) -> ComposeResult:
        rows = Text()
        rows.append("Keys (remap by binding id in gristmill.toml [keymap]) · esc closes\n\n", style="bold")
        seen = set()
        for binding_id, keys, description in self._bindings_table():
            if binding_id in seen:
                continue
            seen.add(binding_id)
            rows.append(f"{keys:<14}", style="bold")
            rows.append(f"{description}  ")
            rows.append(f"[{binding_id}]\n", style="dim")
        with VerticalScroll(id="dialog"):
            yield Static(rows)

    def _bindings_table(self) -> list[tuple[str, str, str]]:
        table: dict[str, tuple[str, list[str], str]] = {}
        for node in (self.below, self.app):
            for binding in node.BINDINGS:
                if isinstance(binding, Binding) and binding.id:
                    keys = typed(getattr(self.app, "keymap_overrides", {}).get(binding.id, binding.key))
                    entry = table.setdefault(binding.id, (binding.id, [], binding.description))
                    entry[1].append(keys)
        return [(i, ",".join(k), d) for i, k, d in table.values()]


class EditScreen(ModalScreen[str | None]):
    """Edit the response; ctrl+s saves (and accepts the edited text), escape cancels. The original is kept.

    The instruction it answers stays in view; escape asks before throwing typed text away; ctrl+o puts
    the model's output back (useful when the editor opens with an earlier, undone edit). Control characters
    show as their pictures (␛) and are given back on save; a text that cannot be shown so raises NotEditable.
    """

    CSS_PATH = "modals.tcss"
    BINDINGS = [
        Binding("ctrl+s", "save", "Save and accept", id="save_edit"),
        Binding("ctrl+o", "original", "Model output", id="original_edit"),
        Binding("escape", "cancel", "Cancel", id="cancel_edit"),
    ]

    def __init__(self, text: str, *, instruction: str = "", original: str | None = None, restored: bool = False):
        super().__init__()
        self.instruction, self.restored = instruction, restored
        self.pictured, (self.text, self.original) = editable(text, text if original is None else original)

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label("Edit · ctrl+s save and accept · ctrl+o model output · esc cancel")  # fits 80 columns
            if self.instruction:
                yield Static(Text("Instruction: " + visible(self.instruction)), id="edit-instruction")
            if self.restored:
                yield Label("Your undone edit is back; ctrl+o gives the model output.", id="restored")  # fits 80
            yield TextArea(self.text, id="editor", soft_wrap=True, show_line_numbers=False)

    def on_mount(self) -> None:
        self.query_one(TextArea).focus()

    def action_save(self) -> None:
        text = self.query_one(TextArea).text
        self.dismiss(from_editable(text) if self.pictured else text)

    def action_original(self) -> None:
        self.query_one(TextArea).text = self.original
        for note in self.query("#restored"):  # "your undone edit is back" no longer describes the text
            note.remove()

    def action_cancel(self) -> None:
        if self.query_one(TextArea).text == self.text:
            self.dismiss(None)
            return
        from gristmill.app.tui.confirm import ConfirmScreen

        def answered(discard: bool | None) -> None:
            if discard:
                self.dismiss(None)

        self.app.push_screen(ConfirmScreen("Discard the text you typed?", yes="Discard"), answered)


class TextScreen(ModalScreen[None]):
    CSS_PATH = "modals.tcss"
    BINDINGS = [Binding("escape,q,d", "dismiss", "Close", id="close_text")]

    def __init__(self, title: str, body: str):
        super().__init__()
        self.title_text, self.body = title, body

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="dialog"):
            yield Label(self.title_text)
            yield Static(Text(visible(self.body)), id="text-body")


class FilterScreen(ModalScreen[QueueFilter | None]):
    """Narrow the review queue by decision state, type, style, run, flag and response length.

    Types, styles and runs are choices among the values the database holds, not free text. Enter applies
    from any field (a closed list included); an open list takes Enter as its choice.
    """

    CSS_PATH = "modals.tcss"
    BINDINGS = [
        Binding("escape", "cancel", "Cancel", id="cancel_filter"),
        Binding("enter", "apply", "Apply", id="apply_filter", priority=True),
    ]

    def __init__(self, current: QueueFilter, choices: dict[str, list] | None = None):
        super().__init__()
        self.current = current
        self.choices = choices or {}

    def check_action(self, action: str, parameters: tuple) -> bool | None:
        if action == "apply":
            return not takes_enter_itself(self.focused)
        return True

    def action_apply(self) -> None:
        self.dismiss(self._value())

    def compose(self) -> ComposeResult:
        c = self.current
        with Vertical(id="dialog"):
            yield Label("Filter the review queue · enter apply · escape cancel")
            yield Select([(s, s) for s in REVIEW_STATES], value=c.state, allow_blank=False, id="state")
            k = self.choices
            with Horizontal():
                yield Select(
                    [(t, t) for t in k.get("types", [])],
                    value=c.instruction_type or Select.NULL,
                    prompt="type (any)",
                    id="type",
                )
                yield Select(
                    [(t, t) for t in k.get("styles", [])],
                    value=c.style or Select.NULL,
                    prompt="style (any)",
                    id="style",
                )
            with Horizontal():
                yield Select(
                    [(label, run_id) for run_id, label in k.get("runs", [])],
                    value=c.run_id if c.run_id is not None else Select.NULL,
                    prompt="run (any)",
                    id="run",
                )
                yield Select([(f, f) for f in ALL_FLAGS], value=c.flag or Select.NULL, prompt="flag (any)", id="flag")
            with Horizontal():
                # digits only: Textual's "integer" type lets a lone "-" through, which int() refuses
                yield Input(
                    str(c.min_chars or ""),
                    placeholder="min chars",
                    type="integer",
                    restrict=r"[0-9]*",
                    max_length=9,
                    id="min",
                )
                yield Input(
                    str(c.max_chars or ""),
                    placeholder="max chars",
                    type="integer",
                    restrict=r"[0-9]*",
                    max_length=9,
                    id="max",
                )
            yield Button("Apply", variant="primary", id="apply")

    def _value(self) -> QueueFilter:
        def text(widget_id: str) -> str | None:
            return self.query_one(f"#{widget_id}", Input).value.strip() or None

        def number(widget_id: str) -> int | None:
            value = text(widget_id)
            return int(value) if value and value.isdecimal() else None

        def chosen(widget_id: str):
            value = self.query_one(f"#{widget_id}", Select).value
            return None if value is Select.NULL else value

        return QueueFilter(
            state=str(self.query_one("#state", Select).value),
            instruction_type=chosen("type"),
            style=chosen("style"),
            run_id=chosen("run"),
            flag=chosen("flag"),
            min_chars=number("min"),
            max_chars=number("max"),
        )

    def on_input_submitted(self) -> None:
        self.dismiss(self._value())

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(self._value())

    def action_cancel(self) -> None:
        self.dismiss(None)
