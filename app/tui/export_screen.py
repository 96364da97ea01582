"""The export dialog: the same `app.export.export` as `gristmill export`, run in a thread worker.

It shows how many records were written, what dedup dropped, and where the file and its manifest went.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Checkbox, Input, Label, Select, Static
from textual.worker import Worker, WorkerState

from gristmill.app import browse, review
from gristmill.app.export import FORMATS, ExportFilter, ExportReport, export

if TYPE_CHECKING:
    from textual import getters

    from gristmill.app.tui.app import GristmillApp

DEFAULT_FILE = "export.jsonl"


def describe(report: ExportReport) -> Text:
    text = Text()
    text.append(f"{report.records:,} record(s) written\n", style="bold")
    text.append(f"dedup dropped {len(report.dropped):,}" + (" (the manifest lists each)\n" if report.dropped else "\n"))
    if report.left_out_by_filters:
        text.append(f"filters left out {report.left_out_by_filters:,} accepted record(s)\n")
    for note in report.notes.lines() if report.notes else ():
        text.append(note + "\n", style="bold")
    if line := report.not_exportable_line():
        text.append(line + "\n", style="bold")
    text.append(f"file: {Path(report.path).resolve()}\nmanifest: {Path(report.manifest_path).resolve()}\n")
    text.append(f"sha256 {report.sha256}", style="dim")
    return text


class ExportScreen(ModalScreen[ExportReport | None]):
    if TYPE_CHECKING:  # the app's own attributes (store, db_path, ...) for the type checker; at run time, Textual's
        app = getters.app(GristmillApp)

    CSS_PATH = "export_screen.tcss"
    BINDINGS = [
        Binding("escape", "close", "Close", id="close_export"),
        Binding("ctrl+s", "export", "Export", id="run_export"),
        Binding("enter", "export_on_enter", "Export", id="enter_export", priority=True, show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.report: ExportReport | None = None
        self.worker: Worker[ExportReport] | None = None

    def compose(self) -> ComposeResult:
        known = browse.choices(self.app.store)
        with VerticalScroll(id="export"):  # at 80x24 the report runs past the screen: the dialog scrolls
            yield Label("Export accepted records · ctrl+s or Enter export · escape close")
            with Horizontal():
                yield Input(DEFAULT_FILE, placeholder="output file (.jsonl)", id="path")
                yield Select([(f, f) for f in FORMATS], value="native", allow_blank=False, id="format")
            with Horizontal():
                yield Select([(t, t) for t in known["types"]], prompt="type (any)", id="type")
                yield Select([(s, s) for s in known["styles"]], prompt="style (any)", id="style")
            with Horizontal():
                yield Select([(label, run_id) for run_id, label in known["runs"]], prompt="run (any)", id="run")
                yield Select([(r, r) for r in known["reviewers"]], prompt="reviewer (any)", id="reviewer")
            with Horizontal():
                yield Input(placeholder="min chars", type="integer", id="min")
                yield Input(placeholder="max chars", type="integer", id="max")
                yield Checkbox("dedup", value=True, id="dedup")
            with Horizontal():
                yield Button("Export", variant="primary", id="go")
                yield Button("Close", id="close")
            yield Static(id="result")

    def on_mount(self) -> None:
        self.query_one("#path", Input).focus()

    def where(self) -> ExportFilter:
        def chosen(widget_id: str):
            value = self.query_one(f"#{widget_id}", Select).value
            return None if value is Select.NULL else value

        def number(widget_id: str) -> int | None:
            text = self.query_one(f"#{widget_id}", Input).value.strip()
            return int(text) if text.isdigit() else None

        return ExportFilter(
            instruction_type=chosen("type"),
            style=chosen("style"),
            run_id=chosen("run"),
            reviewer=chosen("reviewer"),
            min_chars=number("min"),
            max_chars=number("max"),
        )

    def check_action(self, action: str, parameters: tuple) -> bool | None:
        """Enter exports from a closed list or the checkbox too; a text field submits it, a button presses."""
        from gristmill.app.tui.modals import takes_enter_itself

        return not (action == "export_on_enter" and takes_enter_itself(self.focused))

    def action_export_on_enter(self) -> None:
        self.action_export()

    @on(Input.Submitted)
    @on(Button.Pressed, "#go")
    def action_export(self) -> None:
        if self.worker is not None and self.worker.state == WorkerState.RUNNING:
            return
        path = Path(self.query_one("#path", Input).value.strip() or DEFAULT_FILE).expanduser()
        if not path.parent.exists():
            self.query_one("#result", Static).update(Text(f"directory {path.parent} does not exist", style="red"))
            return
        self.query_one("#result", Static).update("Exporting…")
        self.worker = self.run_export(
            path, str(self.query_one("#format", Select).value), self.where(), self.query_one("#dedup", Checkbox).value
        )

    @work(thread=True, exclusive=True, exit_on_error=False, group="export", description="export")
    def run_export(self, path: Path, fmt: str, where: ExportFilter, dedup: bool) -> ExportReport:
        with review.open_database(self.app.db_path, migrate=False) as store:
            if dedup:
                return export(store, path, fmt=fmt, where=where)  # the CLI's default dedup, whatever it is
            return export(store, path, fmt=fmt, where=where, dedup=False)

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        worker = self.worker
        if worker is None or event.worker is not worker:
            return
        result = self.query_one("#result", Static)
        if event.state == WorkerState.SUCCESS and worker.result is not None:  # a success carries run_export's report
            self.report = report = worker.result
            result.update(describe(report))
            self.call_after_refresh(self._show_result)
            self.notify(f"Exported {report.records:,} record(s) to {report.path}")
        elif event.state == WorkerState.ERROR:
            result.update(Text(f"export failed: {event.worker.error}", style="red"))

    def _show_result(self) -> None:
        """Scroll the report into view and focus the dialog, whose arrow keys and page keys then scroll it."""
        dialog = self.query_one("#export", VerticalScroll)
        dialog.focus()
        self.query_one("#result", Static).scroll_visible(animate=False, top=True)

    @on(Button.Pressed, "#close")
    def action_close(self) -> None:
        self.dismiss(self.report)
