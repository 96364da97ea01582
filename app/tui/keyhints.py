"""One line of the room's own keys, above the footer (which carries the rooms): keys as typed, after any keymap."""

from __future__ import annotations

from rich.text import Text
from textual.binding import Binding
from textual.widgets import Static

KEY_NAMES = {
    "question_mark": "?",
    "slash": "/",
    "right_square_bracket": "]",
    "left_square_bracket": "[",
    "escape": "esc",
    "enter": "enter",
    "pagedown": "pgdn",
    "pageup": "pgup",
    "ctrl+s": "^s",
    "ctrl+x": "^x",
    "number_sign": "#",
}


def typed(keys: str) -> str:
    """`question_mark,slash` -> `?,/`: a key as the user types it."""
    return ",".join(KEY_NAMES.get(k.strip(), k.strip()) for k in keys.split(","))


def binding_keys(app, binding: Binding) -> str:
    return typed(getattr(app, "keymap_overrides", {}).get(binding.id, binding.key))


class KeyHints(Static):
    DEFAULT_CSS = "KeyHints { height: 1; padding: 0 1; background: $boost; color: $text-muted; }"

    def __init__(self, hints: tuple[tuple[str, str], ...], **kwargs):
        """hints: (binding id, short label) pairs from the screen's BINDINGS; a label for a fixed text."""
        super().__init__(**kwargs)
        self.hints = hints

    def on_mount(self) -> None:
        by_id = {b.id: b for node in (self.screen, self.app) for b in node.BINDINGS if isinstance(b, Binding) and b.id}
        line = Text()
        for binding_id, label in self.hints:
            binding = by_id.get(binding_id)
            key = binding_keys(self.app, binding).split(",")[0] if binding else binding_id
            if line:
                line.append(" ")
            line.append(key, style="bold")
            line.append(f" {label}")
        self.update(line)
