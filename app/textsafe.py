"""Model output shown as plain text: control characters become visible escapes, never terminal commands."""

from __future__ import annotations

import re

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def visible(text: str) -> str:
    """Replace C0/C1 control characters (ESC included) by `\\xNN`; newlines and tabs stay."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group(0)):02x}", text)
