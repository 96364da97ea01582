"""The generate room: choose the settings, start and stop a run, watch it write.

The run goes through the same pipeline as `gristmill generate` (`app.generate_session.run_job` →
`open_run` / `run_generation`) in a thread worker. The worker checks for cancellation on every
piece of text and reports with messages that replace each other in the queue, so the screen never
floods and never blocks; a stop leaves the item in flight pending and the run resumable. Review
goes on in the other rooms while it runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Button, Footer, Header, Input, Label, ProgressBar, Select, Static
from textual.worker import Worker, WorkerState, get_current_worker

from gristmill.app import browse
from gristmill.app.generate import Progress
from gristmill.app.generate_session import JobRequest, Started, merged, run_job, style_names
from gristmill.app.textsafe import visible
from gristmill.app.tui.keyhints import KeyHints

if TYPE_CHECKING:
    from textual import getters

    from gristmill.app.tui.app import GristmillApp

LIVE_TAIL = 4000  # characters of the item in flight kept on screen
HINTS = (
    ("start_generation", "start/resume"),
    ("stop_generation", "stop"),
    ("leave_field", "leave field"),
    ("tab", "next field"),
)


@dataclass
class RunStarted(Message):
    started: Started


@dataclass
class Progressed(Message):
    """The newest progress replaces any not yet shown."""

    progress: Progress

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, Progressed)


@dataclass
class LiveText(Message):
    """The text of the item in flight so far; the newest replaces any not yet shown."""

    text: str

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, LiveText)


def clock(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    return (
        f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
        if seconds >= 3600
        else f"{seconds // 60}:{seconds % 60:02d}"
    )


class LiveTail:
    """The end of the text being generated, as the room shows it: pieces add to it, and it starts again when the
    item shown finishes. Not on every progress report: the scheduler also reports while nothing finishes (a
    heartbeat), and when another item in flight finishes; clearing then wiped the shown item's text."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.finished = 0

    def piece(self, text: str) -> str:
        self.parts.append(text)
        return "".join(self.parts)[-LIVE_TAIL:]

    def progressed(self, progress: Progress) -> None:
        if progress.processed == self.finished:
            return  # a heartbeat: nothing finished
        self.finished = progress.processed
        if progress.shown_id is None or progress.last_generation_id == progress.shown_id:
            self.parts.clear()


class GenerateScreen(Screen):
    if TYPE_CHECKING:  # the app's own attributes (store, db_path, ...) for the type checker; at run time, Textual's
        app = getters.app(GristmillApp)

    CSS_PATH = "generate_screen.tcss"
    BINDINGS = [
        Binding("ctrl+s", "start", "Start", id="start_generation", show=False),
        Binding("ctrl+x", "stop", "Stop", id="stop_generation", show=False),
        Binding("escape", "leave_field", "Leave field", id="leave_field", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.worker: Worker | None = None
        self.started: Started | None = None
        self.progress: Progress | None = None
        self.stopping = False
        self.note = ""

    def compose(self) -> ComposeResult:
        config = self.app.generate_config
        names = style_names()
        if config.style not in names:
            names.append(config.style)
        yield Header()
        with Vertical(id="form"):
            with Horizontal():
                yield Label("style")
                yield Select([(n, n) for n in names], value=config.style, allow_blank=False, id="style")
                yield Label("samples")
                yield Input(str(config.samples), type="integer", id="samples", classes="short")
                yield Label("max tok")
                yield Input(str(config.max_tokens), type="integer", id="max_tokens", classes="short")
            with Horizontal():
                yield Label("temp")
                yield Input(str(config.temperature), type="number", id="temperature", classes="short")
                yield Label("run")
                yield Select(self._run_options(), prompt="new, or the run these settings match", id="run")
            with Horizontal():
                yield Label("model")
                yield Input(config.model or "", placeholder="GGUF path (empty: the embedded base model)", id="model")
                yield Button("Start", variant="success", id="start")
                yield Button("Stop", variant="error", id="stop", disabled=True)
        yield ProgressBar(total=1, show_eta=False, id="bar")  # not running: a still bar, no animation
        yield Static(
            "Not running. Choose settings and press Start (ctrl+s); the same settings resume their run.", id="status"
        )
        with VerticalScroll(id="live"):
            yield Static(id="live-text")
        yield KeyHints(HINTS)
        yield Footer()

    def _run_options(self) -> list[tuple[str, int]]:
        return [(f"resume {label}", run_id) for run_id, label in browse.choices(self.app.store)["runs"]]

    # --- start and stop -------------------------------------------------------------------------
    def request(self) -> JobRequest | None:
        def number(widget_id: str, cast):
            text = self.query_one(f"#{widget_id}", Input).value.strip()
            try:
                value = cast(text)
            except ValueError:
                self.notify(f"{widget_id.replace('_', ' ')}: not a number ({text!r})", severity="error")
                return None
            return value

        samples, max_tokens = number("samples", int), number("max_tokens", int)
        temperature = number("temperature", float)
        if None in (samples, max_tokens, temperature):
            return None
        if samples < 1 or max_tokens < 1 or temperature < 0:
            self.notify("samples and max tokens must be at least 1, temperature at least 0", severity="error")
            return None
        run = self.query_one("#run", Select).value
        return JobRequest(
            style=str(self.query_one("#style", Select).value),
            samples=samples,
            max_tokens=max_tokens,
            temperature=temperature,
            model=self.query_one("#model", Input).value.strip() or None,
            run_id=run if isinstance(run, int) else None,  # the options' values are run ids; blank: a new run
        )

    @on(Button.Pressed, "#start")
    def action_start(self) -> None:
        if self.running:
            self.notify("A run is already going; stop it first", severity="warning")
            return
        request = self.request()
        if request is None:
            return
        self.stopping = False
        self.started, self.progress, self.note = None, None, ""
        self.query_one("#live-text", Static).update("")
        self._status("Loading the model…")
        self.query_one(ProgressBar).update(total=None)  # indeterminate until the run's size is known
        self._buttons(running=True)
        self.worker = self.generate(request)

    @on(Button.Pressed, "#stop")
    def action_stop(self) -> None:
        if self.worker is None or not self.running:
            self.notify("Nothing is running", severity="information")
            return
        self.stopping = True
        self.worker.cancel()
        self._status("Stopping the model load…" if self.started is None else "Stopping after this piece of text…")

    @property
    def running(self) -> bool:
        return self.worker is not None and self.worker.state in (WorkerState.PENDING, WorkerState.RUNNING)

    def action_leave_field(self) -> None:
        """Out of the text fields, so the room keys (v, b, /, t, x, ?) work again."""
        self.query_one("#live", VerticalScroll).focus()

    @work(thread=True, exclusive=True, exit_on_error=False, group="generate", description="generate")
    def generate(self, request: JobRequest) -> Progress | None:
        worker = get_current_worker()
        live = LiveTail()

        def piece(text: str) -> None:
            self.post_message(LiveText(live.piece(text)))

        def started(started: Started) -> None:
            self.post_message(RunStarted(started))

        def progressed(progress: Progress) -> None:
            live.progressed(progress)
            self.post_message(Progressed(progress))

        return run_job(
            self.app.db_path,
            merged(self.app.generate_config, request),
            on_started=started,
            on_progress=progressed,
            on_piece=piece,
            should_stop=lambda: worker.is_cancelled,
            run_id=request.run_id,
        )

    # --- reports --------------------------------------------------------------------------------
    def on_run_started(self, message: RunStarted) -> None:
        self.started = message.started
        bar = self.query_one(ProgressBar)
        bar.update(total=max(1, message.started.total), progress=message.started.already)
        self._status("" if self.running else None)

    def on_progressed(self, message: Progressed) -> None:
        self.progress = message.progress
        self.query_one(ProgressBar).update(total=max(1, message.progress.total), progress=message.progress.finished)
        self._status()
        self.app.note_generated()

    def on_live_text(self, message: LiveText) -> None:
        self.query_one("#live-text", Static).update(Text(visible(message.text)))
        self.query_one("#live", VerticalScroll).scroll_end(animate=False)

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.worker is not self.worker or event.state not in (
            WorkerState.SUCCESS,
            WorkerState.ERROR,
            WorkerState.CANCELLED,
        ):
            return
        self._buttons(running=False)
        run = f"run {self.started.run_id}" if self.started else "the run"
        if event.state == WorkerState.ERROR:
            self._status(f"Stopped by an error: {event.worker.error}. Finished items are saved.")
            self.notify(str(event.worker.error), title="generate failed", severity="error")
        elif (self.stopping or event.state == WorkerState.CANCELLED) and self.started is None:
            self.query_one(ProgressBar).update(total=1, progress=0)  # no longer the loading bar's animation
            self._status("Stopped while the model loaded: nothing was generated.")
        elif self.stopping or event.state == WorkerState.CANCELLED:
            self._status(f"Stopped: {run} is resumable (Start with the same settings, or choose it under run).")
        else:
            self._status(f"Finished {run}.")
        self.app.refresh_counts()
        runs = self.query_one("#run", Select)
        chosen = runs.value
        runs.set_options(self._run_options())  # a run made just now can be resumed by number
        if chosen is not Select.NULL:
            runs.value = chosen

    def _buttons(self, running: bool) -> None:
        """While a run goes, its settings are fixed: the fields are disabled and focus leaves them."""
        for field in self.query("#form Input, #form Select"):
            field.disabled = running
        self.query_one("#start", Button).disabled = running
        self.query_one("#stop", Button).disabled = not running
        if running:
            self.query_one("#live", VerticalScroll).focus()

    def _status(self, note: str | None = None) -> None:
        """The status lines; a note (loading, stopped, finished) stays until the next one, whatever
        progress message arrives after it."""
        if note is not None:
            self.note = note
        s, p = self.started, self.progress
        parts = [self.note] if self.note else []
        if s is not None:
            parts.append(f"run {s.run_id} · {s.style} · {s.model}")
        if p is not None:
            parts.append(
                f"{p.finished:,}/{p.total:,} · {p.tokens_per_s:.1f} tok/s · ETA {clock(p.eta_s)} · "
                f"refused {p.refused} · failed {p.failed}"
            )
        elif s is not None:
            parts.append(f"{s.already:,}/{s.total:,} already done · generating…")
        self.query_one("#status", Static).update(Text("\n".join(parts)))
