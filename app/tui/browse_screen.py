"""Browse and search every generation: a page at a time from SQLite, sorted, filtered, searched.

The table never holds more than one page; pages and counts load in a thread worker and arrive as
messages tagged with the view they belong to, so a slow sort or count never blocks typing.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.message import Message
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Input, Static
from textual.worker import get_current_worker

from gristmill.app import browse, review
from gristmill.app.browse import BrowseFilter, Page, Sort
from gristmill.app.textsafe import visible
from gristmill.app.tui.keyhints import KeyHints
from gristmill.app.review import Store

if TYPE_CHECKING:
    from textual import getters

    from gristmill.app.tui.app import GristmillApp

PAGE_SIZE = 100
HINTS = (
    ("enter", "open"),
    ("search", "search"),
    ("browse_filter", "filter"),
    ("browse_sort", "sort"),
    ("bulk_accept", "acc all"),
    ("bulk_reject", "rej all"),
    ("browse_undo", "undo"),
    ("next_page", "next"),
    ("previous_page", "prev"),
)  # one line at 80 columns: the ? screen has every key (O reverses the sort)
COLUMNS = (  # what tells rows apart first: at 80 columns the instruction and output are in view, the rest a scroll away
    ("id", "id"),
    ("decision", "decision"),
    ("instruction", "instruction"),
    ("output", "output"),
    ("status", "status"),
    ("type", "type"),
    ("style", "style"),
    ("chars", "chars"),
)
TEXT_WIDTH = 28  # the instruction and output columns: id, decision and both fit 80 columns
SORTABLE = tuple(key for key, _ in COLUMNS if key in browse.SORTS)


def one_line(text: str, width: int = 40) -> Text:
    flat = visible(text).replace("\n", " ⏎ ")
    return Text(flat if len(flat) <= width else flat[: width - 1] + "…")


@dataclass(frozen=True)
class View:
    where: BrowseFilter
    sort: Sort
    offset: int


@dataclass
class PageLoaded(Message):
    view: View
    page: Page


@dataclass
class CountLoaded(Message):
    where: BrowseFilter
    total: int


class ResultsTable(DataTable):
    """The page of results: PgDn and PgUp turn the page, as the help says (a DataTable would move its cursor)."""

    BINDINGS = [
        Binding("pagedown", "screen.page(1)", "Next page", show=False),
        Binding("pageup", "screen.page(-1)", "Prev page", show=False),
    ]


class BrowseScreen(Screen):
    if TYPE_CHECKING:  # the app's own attributes (store, db_path, ...) for the type checker; at run time, Textual's
        app = getters.app(GristmillApp)

    CSS_PATH = "browse_screen.tcss"
    BINDINGS = [
        Binding("f", "filter", "Filter", id="browse_filter", show=False),
        Binding("o", "sort", "Sort", id="browse_sort", show=False),
        Binding("O", "reverse", "Reverse sort", id="browse_reverse", show=False),
        Binding("A", "bulk('accept')", "Accept all", id="bulk_accept", show=False),
        Binding("R", "bulk('reject')", "Reject all", id="bulk_reject", show=False),
        Binding("u", "undo", "Undo", id="browse_undo", show=False),
        Binding("right_square_bracket,pagedown", "page(1)", "Next page", id="next_page", show=False),
        Binding("left_square_bracket,pageup", "page(-1)", "Prev page", id="previous_page", show=False),
        Binding("escape", "clear", "Clear search", id="clear_search", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.view = View(BrowseFilter(), Sort(), 0)
        self.page: Page = Page()
        self.total: int | None = None
        self.want_search = False
        self.count_pending = False
        self.shown_view: View | None = None  # the view whose page the table holds
        self.readers: dict[str, Store] = {}  # one connection per worker group: a count never holds up a page

    def compose(self) -> ComposeResult:
        yield Header()
        yield Input(placeholder="search instruction, input and output (Enter; escape clears)", id="search")
        yield Static(id="browse-meta")
        yield ResultsTable(id="table", cursor_type="row", zebra_stripes=True)
        yield KeyHints(HINTS)
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        for key, label in COLUMNS:
            table.add_column(label, key=key)
        self.load()
        (self.query_one("#search", Input) if self.want_search else table).focus()

    # --- loading --------------------------------------------------------------------------------
    def load(self, *, recount: bool = True) -> None:
        if recount:  # counted once the page is in: a count on a million rows never delays the page
            self.total = None
            self.count_pending = True
        self._show_meta(loading=True)
        if self._bounded(self.view):  # one index or FTS5 seek and LIMIT: no thread round trip needed
            self.on_page_loaded(
                PageLoaded(self.view, browse.page(self.app.store, self.view.where, self.view.sort, 0, PAGE_SIZE))
            )
        else:
            self.fetch_page(self.view)

    @staticmethod
    def _bounded(view: View) -> bool:
        """The first page by id, unfiltered or searched only: its cost does not depend on the table's size
        (rows come in id order from the primary key or the FTS5 index and the LIMIT stops the scan).
        Anything else (another sort, a deep page, a filter that may skip many rows) loads in a worker."""
        return view.sort.column == "id" and view.offset == 0 and replace(view.where, search=None) == BrowseFilter()

    def _reader(self, group: str) -> Store:
        if group not in self.readers:
            self.readers[group] = review.open_database(self.app.db_path, migrate=False)
        return self.readers[group]

    @work(thread=True, exclusive=True, exit_on_error=False, group="browse-page", description="load a page")
    def fetch_page(self, view: View) -> None:
        page = browse.page(self._reader("page"), view.where, view.sort, view.offset, PAGE_SIZE)
        if not get_current_worker().is_cancelled:
            self.post_message(PageLoaded(view, page))

    @work(thread=True, exclusive=True, exit_on_error=False, group="browse-count", description="count rows")
    def fetch_count(self, where: BrowseFilter) -> None:
        total = browse.count(self._reader("count"), where)
        if not get_current_worker().is_cancelled:
            self.post_message(CountLoaded(where, total))

    def on_page_loaded(self, message: PageLoaded) -> None:
        if message.view != self.view:
            return  # an older view's page arrived late
        self.page = message.page
        self.shown_view = message.view
        table = self.query_one(DataTable)
        table.clear()
        for row in message.page.rows:
            table.add_row(
                str(row.generation_id),
                row.decision or "-",
                one_line(row.instruction, TEXT_WIDTH),
                one_line(row.output, TEXT_WIDTH),
                row.status,
                row.instruction_type,
                row.style,
                str(row.chars),
                key=str(row.generation_id),
            )
        self._show_meta()
        if self.count_pending:
            self.count_pending = False
            self.fetch_count(self.view.where)

    def on_count_loaded(self, message: CountLoaded) -> None:
        if message.where == self.view.where:
            self.total = message.total
            self._show_meta()

    def _show_meta(self, loading: bool = False) -> None:
        v = self.view
        table = self.query_one(DataTable)
        total = "counting…" if self.total is None else f"{self.total:,}"
        if loading:
            where = "loading…"
        elif self.page.rows:
            where = f"item {v.offset + table.cursor_row + 1:,} of {total}"
        else:
            where = "nothing matches"  # the count is of this view: nothing to add
        arrow = "↓" if v.sort.descending else "↑"
        self.query_one("#browse-meta", Static).update(
            Text(f"{where} · sort {v.sort.column} {arrow} · {v.where.describe()}")
        )

    @on(DataTable.RowHighlighted)
    def _moved(self) -> None:
        self._show_meta()

    # --- actions --------------------------------------------------------------------------------
    def set_view(self, where: BrowseFilter | None = None, sort: Sort | None = None, offset: int = 0) -> None:
        recount = where is not None and where != self.view.where
        self.view = View(where or self.view.where, sort or self.view.sort, offset)
        self.load(recount=recount)

    def search(self, text: str | None = None) -> None:
        """Focus the search box (the app's `/`); with text, run that search."""
        if not self.query("#search"):  # first visit: not composed yet; on_mount focuses the box
            self.want_search = True
            return
        box = self.query_one("#search", Input)
        if text is not None:
            box.value = text
            self.set_view(replace(self.view.where, search=text.strip() or None))
        box.focus()

    @on(Input.Submitted, "#search")
    def _searched(self, event: Input.Submitted) -> None:
        self.set_view(replace(self.view.where, search=event.value.strip() or None))
        self.query_one(DataTable).focus()

    def action_clear(self) -> None:
        box = self.query_one("#search", Input)
        if box.value or self.view.where.search:
            box.value = ""
            self.set_view(replace(self.view.where, search=None))
        self.query_one(DataTable).focus()

    @on(DataTable.RowSelected)
    def _open(self, event: DataTable.RowSelected) -> None:
        if event.row_key.value is not None:  # every row is added with its generation id as the key
            self.app.open_in_review(int(event.row_key.value))

    @on(DataTable.HeaderSelected)
    def _header(self, event: DataTable.HeaderSelected) -> None:
        column = str(event.column_key.value)
        if column in SORTABLE:
            same = column == self.view.sort.column
            self.set_view(sort=Sort(column, not self.view.sort.descending if same else False))

    def action_sort(self) -> None:
        current = SORTABLE.index(self.view.sort.column) if self.view.sort.column in SORTABLE else -1
        self.set_view(sort=Sort(SORTABLE[(current + 1) % len(SORTABLE)], self.view.sort.descending))

    def action_reverse(self) -> None:
        self.set_view(sort=Sort(self.view.sort.column, not self.view.sort.descending))

    def action_page(self, step: int) -> None:
        offset = self.view.offset + step * PAGE_SIZE
        if offset < 0 or (step > 0 and len(self.page.rows) < PAGE_SIZE):
            self.notify("No more pages that way", severity="information")
            return
        self.set_view(offset=offset)

    def action_filter(self) -> None:
        from gristmill.app.tui.browse_filter import BrowseFilterScreen

        def chosen(where: BrowseFilter | None) -> None:
            if where is not None:
                self.set_view(replace(where, search=self.view.where.search))

        self.app.push_screen(BrowseFilterScreen(self.view.where, browse.choices(self.app.store)), chosen)

    def action_bulk(self, decision: str) -> None:
        from gristmill.app.tui.confirm import ConfirmScreen

        where = self.view.where
        n = len(browse.matching_ids(self.app.store, where))
        if n == 0:
            self.notify("No finished generations in this view to decide", severity="warning")
            return
        verb = "Accept" if decision == "accept" else "Reject"

        def answered(yes: bool | None) -> None:
            if not yes:
                self.notify(f"Bulk {decision} cancelled: nothing recorded")
                return
            reviewer = self.app.reviewer

            def decided(ids: list[int]) -> None:
                self.notify(f"{verb}ed {len(ids):,} generation(s) as one action; u undoes it")
                self.app.refresh_counts()
                self.load()

            # like every decision, never waits for another process's write lock on the event loop
            self.app.write(
                lambda store: browse.bulk_decide(store, where, decision, reviewer),
                decided,
                what=f"bulk decision ({decision} {n:,} generation(s))",
            )

        self.app.push_screen(
            ConfirmScreen(
                f"{verb} all {n:,} finished generation(s) in this view ({where.describe()})?\n"
                f"Recorded as one action: one u undoes it.",
                yes=f"{verb} {n:,}",
            ),
            answered,
        )

    def action_undo(self) -> None:
        reviewer = self.app.reviewer
        self.app.write(lambda store: review.undo(store, reviewer), self._undone, what="undo")

    def _undone(self, touched: list[int]) -> None:
        if not touched:
            self.notify("Nothing to undo", severity="warning")
            return
        self.notify(f"Undid the last action ({len(touched):,} generation(s))")
        self.app.refresh_counts()
        self.load()

    def on_unmount(self) -> None:
        for reader in self.readers.values():
            reader.close()
