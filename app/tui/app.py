"""The app frame: the rooms (one mode each, so a room keeps its state while you are elsewhere), the header
with the counts and the reviewer, help, keymap.

Rooms: review (the start), browse and search, generate, stats; export is a dialog over any room.
Each is one key, shown in the footer, from anywhere.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from textual.timer import Timer
from textual import work
from textual.app import App
from textual.binding import Binding
from textual.message import Message
from textual.notifications import SeverityLevel
from textual.worker import Worker, get_current_worker

from gristmill.app import review
from gristmill.app.config import DEFAULT_REJECT_REASONS, GenerateConfig
from gristmill.app.review import DatabaseBusy, QueryTooSlow, Store

COUNTS_REFRESH_S = 3.0  # at least; a slow count (a million rows) waits proportionally longer
FIRST_COUNT_DELAY_S = 0.5
HEADER_ROOM = 48  # characters of subtitle an 80-column header shows beside the title  # after the first screen is up


def _room_screen(module: str, name: str):
    """Rooms are imported when first visited: the app starts with the review screen alone."""
    import importlib

    return getattr(importlib.import_module(f"gristmill.app.tui.{module}"), name)()


LOOKUP_STEPS = (
    50_000  # SQLite steps a lookup may take on the event loop (about a millisecond); longer ones go to a thread
)


class WriteAbandoned(Exception):
    """The app quit while a write waited for the lock: the worker stops waiting, nothing was written."""


@dataclass
class CountsUpdated(Message):
    """Posted by the counts worker; the newest replaces any older one."""

    counts: dict[str, int]
    seconds: float


class GristmillApp(App):
    TITLE = "gristmill"
    CSS_PATH = "app.tcss"
    ENABLE_COMMAND_PALETTE = False
    BINDINGS = [
        Binding("v", "room('review')", "Review", id="room_review"),
        Binding("b", "room('browse')", "Browse", id="room_browse"),
        Binding("slash", "search", "Search", id="search"),
        Binding("g", "room('generate')", "Gen", id="room_generate"),
        Binding("t", "room('stats')", "Stats", id="room_stats"),
        Binding("x", "export", "Export", id="export"),
        Binding("question_mark", "help", "Help", id="help"),
        Binding("q", "quit", "Quit", id="quit"),
    ]
    MODES = {
        "review": lambda: _room_screen("review_screen", "ReviewScreen"),
        "browse": lambda: _room_screen("browse_screen", "BrowseScreen"),
        "generate": lambda: _room_screen("generate_screen", "GenerateScreen"),
        "stats": lambda: _room_screen("stats_screen", "StatsScreen"),
    }

    def __init__(
        self,
        db_path: Path,
        *,
        reviewer: str,
        keymap: dict[str, str] | None = None,
        store: Store | None = None,
        reject_reasons: Sequence[str] = DEFAULT_REJECT_REASONS,
        generate_config: GenerateConfig | None = None,
    ):
        super().__init__()
        self.reject_reasons = list(reject_reasons)
        self.generate_config = generate_config or GenerateConfig()  # the generate room's defaults
        self.db_path = Path(db_path)
        self.reviewer = reviewer
        self.store = store or review.open_database(self.db_path)
        self.keymap_overrides = keymap or {}
        self.counts: dict[str, int] = {}
        self._next_count: Timer | None = None
        self.saving = False  # a decision is waiting for another process's write lock
        self.saving_what = "decision"  # what waits, e.g. "decision (accept #3)", "undo", for the messages
        self._quit_asked = False  # q was pressed once while something waited
        # what a worker waits to save, until it lands (set back on the worker's thread); still set after the
        # app quit while it waited, so the command line can say it was not saved
        self.unsaved: str | None = None
        self.write_settled = threading.Event()  # clear while a worker waits to write: set once it has stopped
        self.write_settled.set()
        self.looking_up = False  # a queue lookup too slow for the event loop runs in a thread

    def notify(
        self,
        message: str,
        *,
        title: str = "",
        severity: SeverityLevel = "information",
        timeout: float | None = None,
        markup: bool = False,
    ) -> None:
        """Every notification is plain text, whoever raises it (screens pass markup=True): they carry paths, error
        texts and reject reasons as they are, and a `[/x]` in one would crash the app, a `[Errno 2]` vanish."""
        super().notify(message, title=title, severity=severity, timeout=timeout, markup=False)

    def action_help_quit(self) -> None:
        """Ctrl+C is a key here (a text field copies with it): say which keys quit. Textual's own hint is markup,
        which the plain-text notifications above would show as `[b]ctrl+q[/b]`."""
        from gristmill.app.tui.keyhints import typed

        keys = [key for key, active in self.active_bindings.items() if active.binding.action in ("quit", "app.quit")]
        if keys:
            self.notify(f"Press {' or '.join(typed(key) for key in keys)} to quit", title="Ctrl+C does not quit here")

    def on_mount(self) -> None:
        if self.keymap_overrides:
            self.set_keymap(self.keymap_overrides)
        self.sub_title = f"{self.db_path.name} · reviewer {self.reviewer}"
        self.switch_mode("review")
        self.set_timer(FIRST_COUNT_DELAY_S, self.refresh_counts)

    # --- rooms ----------------------------------------------------------------------------------
    def action_room(self, name: str) -> None:
        if self.current_mode != name:
            self.switch_mode(name)

    def room(self, name: str):
        """The screen of a room (created on first visit); for opening an item in review from elsewhere."""
        self.action_room(name)
        return self.screen_stack[0] if self.screen_stack else self.screen

    def open_in_review(self, generation_id: int) -> None:
        self.room("review").open(generation_id)

    def action_search(self) -> None:
        self.room("browse").search()

    def action_export(self) -> None:
        from gristmill.app.tui.export_screen import ExportScreen

        self.push_screen(ExportScreen())

    @work(thread=True, exclusive=True, exit_on_error=False, group="counts", description="count generations")
    def refresh_counts(self) -> None:
        """Counting a million rows takes a moment: never on the event loop, never before the first screen.

        Counts also change under us (a generator writing beside the app), so they are refreshed
        periodically; the next refresh waits at least 20 times as long as this count took.
        """
        started = time.perf_counter()
        with review.open_database(self.db_path, migrate=False) as store:
            counts = review.counts(store)
        if not get_current_worker().is_cancelled:
            self.post_message(CountsUpdated(counts, time.perf_counter() - started))

    def on_counts_updated(self, message: CountsUpdated) -> None:
        changed = bool(self.counts) and message.counts != self.counts  # another process wrote beside the app
        self.counts = message.counts
        self._show_counts()
        if changed and (recount := getattr(self.screen, "counts_changed", None)):
            recount()
        if self._next_count is not None:
            self._next_count.stop()
        self._next_count = self.set_timer(max(COUNTS_REFRESH_S, 20 * message.seconds), self.refresh_counts)

    # --- the database without blocking the event loop -------------------------------------------
    def write(self, action: Callable[[Store], Any], then: Callable[[Any], None], *, what: str = "decision") -> bool:
        """Commit `action` now if the write lock is free, else in a thread that waits for it (the header says
        so); `then(result)` runs on the event loop once committed. False if a write is already waiting: one at
        a time, so a decision is never queued behind another the reviewer may still change their mind about."""
        if self.saving:
            self.notify(f"Still saving the last {self.saving_what}: the database is busy", severity="warning")
            return False
        try:
            with self.store.write(wait=False):
                result = action(self.store)
        except DatabaseBusy:
            self.saving, self.saving_what, self.unsaved = True, what, what
            self.write_settled.clear()
            self._quit_asked = False
            self._show_counts()
            self._write_when_free(action, then)
            return True
        then(result)
        return True

    @work(thread=True, exit_on_error=False, group="write", description="save a decision")
    def _write_when_free(self, action: Callable[[Store], Any], then: Callable[[Any], None]) -> None:
        try:
            self._wait_and_write(get_current_worker(), action, then)
        finally:
            self.write_settled.set()

    def _wait_and_write(self, worker: Worker, action: Callable[[Store], Any], then: Callable[[Any], None]) -> None:
        """Wait for the lock on this thread's own connection; give up (nothing written) once the app quits."""

        def unless_quitting(waited: float | None) -> None:
            # None: the statement has just landed after a wait (a COMMIT then is committed: never abandon it)
            if waited is not None and (worker.is_cancelled or not self.is_running):
                raise WriteAbandoned

        try:
            with review.open_database(self.db_path, migrate=False) as store:
                store.on_busy = unless_quitting  # called between attempts: the wait ends when the app does
                with store.write():  # waits, with backoff, for as long as the other writer holds the lock
                    result = action(store)
            self.unsaved = None  # committed, whatever happens to the app now
        except WriteAbandoned:
            return  # the app is quitting: it told the reviewer this decision is not saved
        except Exception as error:  # not saved: say so, and let the reviewer try again
            if not worker.is_cancelled:
                self.call_from_thread(self._not_written, error)
            raise
        if not worker.is_cancelled and self.is_running:  # a write landing while the app closes updates nothing
            self.call_from_thread(self._written, then, result)

    def _not_written(self, error: Exception) -> None:
        self.saving, self.unsaved = False, None  # said here: the reviewer can decide again
        self._show_counts()
        self.notify(f"The {self.saving_what} was not saved: {error}", severity="error")

    def _written(self, then: Callable[[Any], None], result: Any) -> None:
        self.saving = False
        self._show_counts()
        then(result)

    async def action_quit(self) -> None:
        """Quit; while a decision waits for the database, only when asked twice (it is not saved then)."""
        if self.saving and not self._quit_asked:
            self._quit_asked = True
            self.notify(
                f"The {self.saving_what} is still waiting for the database (another process is writing): "
                "press q again to quit without it",
                severity="warning",
                timeout=10,
            )
            return
        self.exit()

    def lookup(self, query: Callable[[Store], Any], then: Callable[[Any], None], *, background: bool = False) -> None:
        """Run a queue lookup on the event loop if it is quick; one that would scan (a filter matching
        nothing in a million rows) is interrupted and redone in a thread, and `then` runs when it ends.
        `background` lookups (periodic rechecks) go to the thread at once: they are never urgent."""
        if background:
            self.looking_up = True
            self._lookup_in_thread(query, then)
            return
        try:
            with self.store.budget(LOOKUP_STEPS):
                result = query(self.store)
        except QueryTooSlow:
            self.looking_up = True
            self._lookup_in_thread(query, then)
            return
        then(result)

    @work(thread=True, exclusive=True, exit_on_error=False, group="lookup", description="search the queue")
    def _lookup_in_thread(self, query: Callable[[Store], Any], then: Callable[[Any], None]) -> None:
        try:
            with review.open_database(self.db_path, migrate=False) as store:
                result = query(store)
        finally:
            self.looking_up = False  # a failed lookup must not stop the empty view's rechecks
        if not get_current_worker().is_cancelled:
            self.call_from_thread(self._looked_up, then, result)

    def _looked_up(self, then: Callable[[Any], None], result: Any) -> None:
        self.looking_up = False
        then(result)

    def note_decision(self, before: str | None, after: str | None) -> None:
        """Adjust the counts for a decision this app just made, without recounting the table."""
        if self.counts:
            self.counts[before or "unreviewed"] -= 1
            self.counts[after or "unreviewed"] += 1
            self._show_counts()

    def note_generated(self) -> None:
        """A generation finished in the generate room: recount soon (the periodic worker paces itself)."""
        if self._next_count is None:
            self.refresh_counts()

    def _show_counts(self) -> None:
        c = self.counts
        if self.saving:  # first, and short: the counts stay in view beside it
            busy = "saving: database busy"
            self.sub_title = f"{busy} · {c['unreviewed']} to review" if c else f"{busy} (another process writes)…"
            return
        if not c:
            self.sub_title = f"{self.db_path.name} · reviewer {self.reviewer}"
            return
        counts = f"{c['unreviewed']} to review · {c['accept']} acc · {c['reject']} rej · {c['skip']} skip"
        # an 80-column header has room for about 60 characters beside the title: the counts and the
        # reviewer always; the database's name when it fits
        full = f"{self.db_path.name} · {counts} · {self.reviewer}"
        self.sub_title = full if len(full) <= HEADER_ROOM else f"{counts} · {self.reviewer}"

    def action_help(self) -> None:
        from gristmill.app.tui.modals import HelpScreen

        self.push_screen(HelpScreen(self.screen))

    def on_unmount(self) -> None:
        self.store.close()


def make_app(
    db_path: Path,
    *,
    reviewer: str,
    keymap: dict[str, str] | None = None,
    reject_reasons: Sequence[str] = DEFAULT_REJECT_REASONS,
    generate_config: GenerateConfig | None = None,
) -> GristmillApp:
    """The one factory used by the CLI and the tests."""
    return GristmillApp(
        db_path, reviewer=reviewer, keymap=keymap, reject_reasons=reject_reasons, generate_config=generate_config
    )
