"""The `[keymap]` of gristmill.toml, checked against every room's bindings before the app starts.

Textual applies a keymap as given: an unknown binding id is ignored, and a key given to two bindings of one
screen goes to whichever comes first, so remapping accept to `r` made `r` accept and left reject unreachable.
Both are configuration errors, said in one line before the app starts.
"""

from __future__ import annotations

from textual.app import App
from textual.binding import Binding
from textual.keys import Keys, _character_to_key  # how Textual itself spells a one-character key

from gristmill.app.tui.app import GristmillApp
from gristmill.app.tui.browse_filter import BrowseFilterScreen
from gristmill.app.tui.browse_screen import BrowseScreen
from gristmill.app.tui.confirm import ConfirmScreen
from gristmill.app.tui.export_screen import ExportScreen
from gristmill.app.tui.generate_screen import GenerateScreen
from gristmill.app.tui.jump import JumpScreen
from gristmill.app.tui.keyhints import typed
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


MODIFIERS = {"ctrl", "shift", "alt", "meta", "super", "hyper"}
KEY_NAMES = {key.value.split("+")[-1] for key in Keys if not key.value.startswith("<")} | {
    _character_to_key(chr(code)) for code in range(33, 127)
}


def is_key(key: str) -> bool:
    """A key Textual can send: one character, or a key name (`f5`, `pagedown`, `question_mark`), after any
    modifiers (`ctrl+`, `shift+`...). Anything else is a binding no key reaches."""
    if len(key) == 1:
        return True
    *modifiers, name = key.split("+")
    return all(m in MODIFIERS for m in modifiers) and (len(name) == 1 or name in KEY_NAMES)


def _bindings(owner: type) -> list[Binding]:
    return [b if isinstance(b, Binding) else Binding(*b) for b in getattr(owner, "BINDINGS", [])]


def _keys(binding: Binding, keymap: dict[str, str]) -> set[str]:
    """The keys `binding` answers to under `keymap`, spelled as Textual spells them ("?" is "question_mark")."""
    given = keymap.get(binding.id, binding.key) if binding.id else binding.key
    return {_character_to_key(key) if len(key) == 1 else key for key in map(str.strip, given.split(",")) if key}


def _holders(bindings: list[Binding], keymap: dict[str, str]) -> dict[str, list[Binding]]:
    holders: dict[str, list[Binding]] = {}
    for binding in bindings:
        for key in _keys(binding, keymap):
            holders.setdefault(key, []).append(binding)
    return holders


def keymap_problem(keymap: dict[str, str]) -> str | None:
    """The first problem with `keymap` (binding id -> keys), as `keymap.ID: ...`, or None.

    A key two bindings of one screen already share without the keymap (a dialog's own `q` over the app's
    quit) is by design; a clash is a pair the keymap makes."""
    app_bindings = _bindings(GristmillApp) + _bindings(App)  # Textual's own: ctrl+q quits, ctrl+c tells how to
    known = {b.id for b in app_bindings if b.id} | {
        b.id for screen in SCREENS.values() for b in _bindings(screen) if b.id
    }
    for binding_id, keys in keymap.items():
        if binding_id not in known:
            return f"keymap.{binding_id}: no binding has that id (the app's ? screen lists each binding's id)"
        given = [key.strip() for key in keys.split(",") if key.strip()]
        if not given:
            return f"keymap.{binding_id}: no key given (the comma and space keys are written comma and space)"
        if unknown := [key for key in given if not is_key(key)]:
            return (
                f"keymap.{binding_id}: {unknown[0]!r} is no key (one character, or a name such as f5, pagedown, "
                "space, with ctrl+, shift+ or alt+ before it)"
            )
    for where, screen in SCREENS.items():
        bindings = _bindings(screen) + app_bindings
        by_default = _holders(bindings, {})
        for key, holders in _holders(bindings, keymap).items():
            shared_before = {b.id for b in by_default.get(key, [])}
            for remapped in (b for b in holders if b.id in keymap):
                for other in holders:
                    if other.action == remapped.action:  # quit = "ctrl+q" beside Textual's own ctrl+q quit
                        continue
                    if other.id != remapped.id and not {other.id, remapped.id} <= shared_before:
                        what = repr(other.id) if other.id else f"Textual's own {other.action!r}"
                        return (
                            f"keymap.{remapped.id}: key {typed(key)!r} is already {what} "
                            f"({other.description or 'built in'}) in the {where}; give one of them another key"
                        )
    return None
