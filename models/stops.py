"""Stop sequences matched on decoded text, whatever the token boundaries."""

from __future__ import annotations

import codecs
from collections.abc import Sequence


class Utf8Stream:
    """Turns token bytes into text; a character split across tokens waits for its last byte."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, data: bytes) -> str:
        return self._decoder.decode(data)

    def flush(self) -> str:
        return self._decoder.decode(b"", final=True)


class StopMatcher:
    """Holds back just enough text to recognize a stop string split across pieces.

    `feed` returns the text that is safe to emit; once a stop string appears, `stopped` is set and
    the text before it is all that is ever emitted.
    """

    def __init__(self, stops: Sequence[str]):
        self.stops = [s for s in stops if s]
        self._hold = max((len(s) for s in self.stops), default=1) - 1
        self._pending = ""
        self.stopped = False
        self.text = ""

    def feed(self, piece: str) -> str:
        if self.stopped:
            return ""
        self._pending += piece
        first = min(((self._pending.find(s), s) for s in self.stops if s in self._pending), default=None)
        if first is not None:
            emit = self._pending[: first[0]]
            self._pending = ""
            self.stopped = True
        else:
            cut = len(self._pending) - self._hold if self._hold else len(self._pending)
            # never split a held-back surrogate pair: text here is str, so a cut is always safe
            emit, self._pending = self._pending[: max(cut, 0)], self._pending[max(cut, 0) :]
        self.text += emit
        return emit

    def flush(self) -> str:
        """At the end of generation the held-back tail is ordinary text."""
        if self.stopped:
            return ""
        emit, self._pending = self._pending, ""
        self.text += emit
        return emit
