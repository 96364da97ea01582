"""The app frame: header with database and counts, the review screen, help, keymap."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from textual import work
from textual.app import App
from textual.binding import Binding
from textual.message import Message
from textual.worker import get_current_worker

from gristmill.db import Store, open_store
from gristmill.db import reviews as reviews_db

COUNTS_REFRESH_S = 3.0


@dataclass
class CountsUpdated(Message):
    """Posted by the counts worker; the newest replaces any older one."""

    counts: dict[str, int]


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
        self.store = store or open_store(self.db_path)
        self.keymap_overrides = keymap or {}
        self.counts: dict[str, int] = {}

    def on_mount(self) -> None:
        from gristmill.app.tui.review_screen import ReviewScreen

        if self.keymap_overrides:
            self.set_keymap(self.keymap_overrides)
        self.sub_title = f"{self.db_path} · reviewer {self.reviewer}"
        self.push_screen(ReviewScreen())
        self.refresh_counts()
        self.set_interval(COUNTS_REFRESH_S, self.refresh_counts)

    @work(thread=True, exclusive=True, exit_on_error=False, group="counts", description="count generations")
    def refresh_counts(self) -> None:
        """Counting a million rows takes a moment: never on the event loop, never before the first screen."""
        with open_store(self.db_path, migrate=False) as store:
            counts = reviews_db.counts(store)
        if not get_current_worker().is_cancelled:
            self.post_message(CountsUpdated(counts))

    def on_counts_updated(self, message: CountsUpdated) -> None:
        self.counts = message.counts
        c = message.counts
        self.sub_title = (f"{self.db_path} · {c['unreviewed']} to review · {c['accept']} accepted · "
                          f"{c['reject']} rejected · {c['skip']} skipped · {self.reviewer}")

    def action_help(self) -> None:
        from gristmill.app.tui.modals import HelpScreen

        self.push_screen(HelpScreen(self.screen))

    def on_unmount(self) -> None:
        self.store.close()


def make_app(db_path: Path, *, reviewer: str, keymap: dict[str, str] | None = None) -> GristmillApp:
    """The one factory used by the CLI and the tests."""
    return GristmillApp(db_path, reviewer=reviewer, keymap=keymap)
