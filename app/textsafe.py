"""Model output shown as plain text: control characters become visible escapes, never terminal commands."""

from __future__ import annotations

import re

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")

# In the editor a control character is shown as its Unicode control picture (ESC as ␛, CR as ␍, DEL as ␡) and
# turned back on save: a text field cannot show `\x1b` escapes and give the same bytes back when they are edited.
_PICTURE_OF = {chr(code): chr(0x2400 + code) for code in range(0x20) if chr(code) not in "\n\t"} | {"\x7f": "\u2421"}
_CONTROL_OF = {picture: control for control, picture in _PICTURE_OF.items()}
_PICTURES = re.compile(f"[{''.join(_CONTROL_OF)}]")
_C0_OR_DEL = re.compile(f"[{''.join(map(re.escape, _PICTURE_OF))}]")
_C1 = re.compile(r"[\x80-\x9f]")


def visible(text: str) -> str:
    """Replace C0/C1 control characters (ESC included) by `\\xNN`; newlines and tabs stay."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group(0)):02x}", text)


class NotEditable(ValueError):
    """A text the editor could not show safely and give back byte for byte."""


def editable(*texts: str) -> tuple[bool, list[str]]:
    """The texts as an editor shows them, and whether their control characters became pictures.

    Pictures are used only where a text has a control character, so a text with none is edited as it is (a ␛
    typed there stays a ␛). Refused: a C1 control (it has no picture), or a control beside a picture already
    in the texts (saving could not tell them apart)."""
    if any(_C1.search(text) for text in texts):
        raise NotEditable("it holds C1 control characters (U+0080 to U+009F), which the editor cannot show")
    if not any(_C0_OR_DEL.search(text) for text in texts):
        return False, list(texts)
    if any(_PICTURES.search(text) for text in texts):
        raise NotEditable("it holds control characters and the symbols the editor would show them as (␛, ␍…)")
    return True, [_C0_OR_DEL.sub(lambda m: _PICTURE_OF[m.group(0)], text) for text in texts]


def from_editable(text: str) -> str:
    """The text an editor gave back, with each control picture turned back into its control character."""
    return _PICTURES.sub(lambda m: _CONTROL_OF[m.group(0)], text)
