"""The `[keymap]` of gristmill.toml, checked against every room's bindings before the app starts.

Textual applies a keymap as given: an unknown binding id is ignored, and a key given to two bindings of one
screen goes to whichever comes first, so remapping accept to `r` made `r` accept and left reject unreachable.
Both are configuration errors, said in one line before the app starts.
"""

from __future__ import annotations

from textual.binding import Binding

from gristmill.app.tui.app import GristmillApp
from gristmill.app.tui.browse_filter import BrowseFilterScreen
from gristmill.app.tui.browse_screen import BrowseScreen
from gristmill.app.tui.confirm import ConfirmScreen
from gristmill.app.tui.export_screen import ExportScreen
from gristmill.app.tui.generate_screen import GenerateScreen
from gristmill.app.tui.jump import JumpScreen
from gristmill.app.tui.modals import EditScreen, FilterScreen, HelpScreen, TextScreen
from gristmill.app.tui.reasons import ReasonScreen
from gristmill.app.tui.review_screen import ReviewScreen
from gristmill.app.tui.stats_screen import StatsScreen

# every screen with keys of its own, by the name the help screen and the README give it; the app's keys
# (rooms, search, help, quit) are in force on each of them
SCREENS = {
    "review room": ReviewScreen,
    "browse room": BrowseScreen,
    "generate room": GenerateScreen,
    "stats room": StatsScreen,
    "export dialog": ExportScreen,
    "browse filter": BrowseFilterScreen,
    "review filter": FilterScreen,
    "edit dialog": EditScreen,
    "jump dialog": JumpScreen,
    "reason dialog": ReasonScreen,
    "confirmation": ConfirmScreen,
    "help screen": HelpScreen,
    "text view": TextScreen,
}


def _bindings(owner: type) -> list[Binding]:
    return [b if isinstance(b, Binding) else Binding(*b) for b in getattr(owner, "BINDINGS", [])]


def _keys(binding: Binding, keymap: dict[str, str]) -> list[str]:
    given = keymap.get(binding.id, binding.key) if binding.id else binding.key
    return [key.strip() for key in given.split(",") if key.strip()]


def keymap_problem(keymap: dict[str, str]) -> str | None:
    """The first problem with `keymap` (binding id -> keys), as `keymap.ID: ...`, or None."""
    app_bindings = _bindings(GristmillApp)
    known = {b.id for b in app_bindings if b.id} | {
        b.id for screen in SCREENS.values() for b in _bindings(screen) if b.id
    }
    for binding_id, keys in keymap.items():
        if binding_id not in known:
            return f"keymap.{binding_id}: no binding has that id (the app's ? screen lists each binding's id)"
        if not [key for key in keys.split(",") if key.strip()]:
            return f"keymap.{binding_id}: no key given"
    for where, screen in SCREENS.items():
        holders: dict[str, Binding] = {}
        for binding in _bindings(screen) + app_bindings:
            for key in _keys(binding, keymap):
                other = holders.setdefault(key, binding)
                if other is binding or other.id == binding.id:
                    continue
                if binding.id in keymap or other.id in keymap:
                    remapped = binding if binding.id in keymap else other
                    clashing = other if remapped is binding else binding
                    return (
                        f"keymap.{remapped.id}: key {key!r} is already {clashing.id!r} ({clashing.description}) "
                        f"in the {where}; give one of them another key"
                    )
    return None
