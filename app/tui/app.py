"""The app frame: header with database and counts, the review screen, help, keymap."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from textual import work
from textual.app import App
from textual.binding import Binding
from textual.message import Message
from textual.worker import get_current_worker

from gristmill.app import review
from gristmill.app.review import Store

COUNTS_REFRESH_S = 3.0  # at least; a slow count (a million rows) waits proportionally longer
FIRST_COUNT_DELAY_S = 0.5  # after the first screen is up


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
        Binding("question_mark", "help", "Help", id="help"),
        Binding("q", "quit", "Quit", id="quit"),
    ]

    def __init__(self, db_path: Path, *, reviewer: str, keymap: dict[str, str] | None = None,
                 store: Store | None = None):
        super().__init__()
        self.db_path = Path(db_path)
        self.reviewer = reviewer
        self.store = store or review.open_database(self.db_path)
        self.keymap_overrides = keymap or {}
        self.counts: dict[str, int] = {}
        self._next_count = None

    def on_mount(self) -> None:
        from gristmill.app.tui.review_screen import ReviewScreen

        if self.keymap_overrides:
            self.set_keymap(self.keymap_overrides)
        self.sub_title = f"{self.db_path.name} · reviewer {self.reviewer}"
        self.push_screen(ReviewScreen())
        self.set_timer(FIRST_COUNT_DELAY_S, self.refresh_counts)

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
        self.counts = message.counts
        self._show_counts()
        if self._next_count is not None:
            self._next_count.stop()
        self._next_count = self.set_timer(max(COUNTS_REFRESH_S, 20 * message.seconds), self.refresh_counts)

    def note_decision(self, before: str | None, after: str | None) -> None:
        """Adjust the counts for a decision this app just made, without recounting the table."""
        if self.counts:
            self.counts[before or "unreviewed"] -= 1
            self.counts[after or "unreviewed"] += 1
            self._show_counts()

    def _show_counts(self) -> None:
        c = self.counts
        # short enough for an 80-column header
        self.sub_title = (f"{self.db_path.name} · {c['unreviewed']} to review · {c['accept']} acc · "
                          f"{c['reject']} rej · {c['skip']} skip · {self.reviewer}")

    def action_help(self) -> None:
        from gristmill.app.tui.modals import HelpScreen

        self.push_screen(HelpScreen(self.screen))

    def on_unmount(self) -> None:
        self.store.close()


def make_app(db_path: Path, *, reviewer: str, keymap: dict[str, str] | None = None) -> GristmillApp:
    """The one factory used by the CLI and the tests."""
    return GristmillApp(db_path, reviewer=reviewer, keymap=keymap)
