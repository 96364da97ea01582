"""Compare samples: every sample of an instruction in view at once, each numbered as its best-of-N key.

Side by side when the terminal is wide enough for readable columns, stacked otherwise; each sample
scrolls in its own pane, so a long one never pushes the others out of view.
"""

from __future__ import annotations

from rich.text import Text
from textual.containers import Container, VerticalScroll
from textual.widgets import Static

from gristmill.app.review import Sample
from gristmill.app.textsafe import visible

MIN_COLUMN = 38  # characters: narrower columns wrap every other word


def pane_title(sample: Sample, current: bool) -> str:
    state = sample.decision or ("unreviewed" if sample.status == "done" else sample.status)
    if sample.edited:
        state += " (edited)"
    tokens = f" · {sample.completion_tokens} tok" if sample.status == "done" else ""
    return f"{'▶ ' if current else ''}{sample.number} · {state}{tokens}"


class SamplePane(VerticalScroll):
    """One sample; its border title carries the key that picks it."""

    def __init__(self, sample: Sample, current: bool):
        super().__init__(classes="sample-pane" + (" current" if current else ""))
        self.sample = sample
        self.border_title = pane_title(sample, current)
        if sample.flags:
            self.border_subtitle = ", ".join(sample.flags)

    def compose(self):
        s = self.sample
        if s.status == "done":
            body = Text(visible(s.text))
        else:
            body = Text(f"({s.status}{': ' + s.error if s.error else ''})", style="italic")
        yield Static(body, classes="sample-text")


class ComparePanes(Container):
    DEFAULT_CSS = """
    ComparePanes { height: 1fr; layout: vertical; }
    ComparePanes.side-by-side { layout: horizontal; }
    ComparePanes SamplePane { height: 1fr; width: 1fr; border: round $panel-lighten-2; padding: 0 1; }
    ComparePanes SamplePane.current { border: round $accent; }
    ComparePanes SamplePane:focus { border: round $success; }
    """

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.samples: list[Sample] = []

    def show(self, samples: list[Sample], current_id: int) -> None:
        """Replace the panes (removal and mounting complete before the next message is handled)."""
        self.samples = samples
        self.remove_children()
        self.mount_all([SamplePane(s, s.generation_id == current_id) for s in samples])
        self._arrange(self.app.size.width)

    def _arrange(self, width: int) -> None:
        self.set_class(bool(self.samples) and width >= MIN_COLUMN * len(self.samples), "side-by-side")

    def on_resize(self) -> None:
        self._arrange(self.app.size.width)

    def texts(self) -> dict[int, str]:
        """Number → text shown, for tests and the help."""
        return {s.number: s.text for s in self.samples}
