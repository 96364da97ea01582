"""The review screen: one generation at a time, decided from the keyboard, committed before moving on."""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import Collapsible, Footer, Header, Static
from textual.worker import get_current_worker

from gristmill.app import browse, review
from gristmill.app.review import Pick, QueueFilter, ReviewItem, Store
from gristmill.app.textsafe import visible
from gristmill.app.tui.compare import ComparePanes
from gristmill.app.tui.keyhints import KeyHints

if TYPE_CHECKING:
    from textual import getters

    from gristmill.app.tui.app import GristmillApp

EMPTY_RECHECK_S = 2.0
HISTORY = 200  # items `k` can walk back through
QUEUE_RECOUNT_S = 10.0  # the queue's length is recounted at most this often (decisions here adjust it)


def plain(text: str, style: str = "") -> Text:
    """Model text as a Rich Text: never parsed as markup, control characters made visible."""
    return Text(visible(text), style=style)


HINTS = (
    ("accept", "acc"),
    ("reject", "rej"),
    ("reject_reason", "why"),
    ("edit", "edit"),
    ("skip", "skip"),
    ("undo", "undo"),
    ("next", "next"),
    ("previous", "back"),
    ("1-9", "pick"),
    ("toggle_compare", "cmp"),
    ("filter", "filter"),
)  # one line at 80 columns: the ? screen has every key (# jumps to an id)


class ReviewScreen(Screen):
    if TYPE_CHECKING:  # the app's own attributes (store, reviewer, write, ...) for the type checker
        app = getters.app(GristmillApp)

    CSS_PATH = "review_screen.tcss"
    BINDINGS = [
        Binding("a", "accept", "Accept", id="accept", show=False),
        Binding("r", "reject", "Reject", id="reject", show=False),
        Binding("R", "reject_reason", "Reject because…", id="reject_reason", show=False),
        Binding("e", "edit", "Edit", id="edit", show=False),
        Binding("s", "skip", "Skip", id="skip", show=False),
        Binding("u", "undo", "Undo", id="undo", show=False),
        Binding("j,down", "next", "Next", id="next", show=False),
        Binding("k,up", "previous", "Prev", id="previous", show=False),
        Binding("d", "diff", "Diff", id="diff", show=False),
        Binding("f", "filter", "Filter", id="filter", show=False),
        Binding("p", "toggle_prompt", "Prompt", id="toggle_prompt", show=False),
        Binding("c", "toggle_compare", "Compare", id="toggle_compare", show=False),
        Binding("number_sign", "jump", "Go to id", id="jump", show=False),
        *[Binding(str(n), f"best({n})", f"Best of N: sample {n}", id=f"best_{n}", show=False) for n in range(1, 10)],
    ]

    def __init__(self) -> None:
        super().__init__()
        self.queue = QueueFilter()
        self.item: ReviewItem | None = None
        self.last_seen_id: int = 0  # where an empty queue re-checks from
        self.compare = True  # several samples of one instruction: show them all (c toggles)
        self.position: tuple[int, int] | None = None  # (position in the queue, queue length)
        self.history: list[int] = []  # items decided or passed in this sitting, newest last
        self.queue_total: tuple[QueueFilter, int, float] | None = None  # (queue, its length, when counted)
        self.position_lock = threading.Lock()
        self.reader: Store | None = None  # the position worker's own connection

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(id="meta")
        with VerticalScroll(id="body"):
            yield Static(id="instruction")
            yield Static(id="output")
            with Collapsible(title="Fed prompt (exact text)", collapsed=True, id="prompt-panel"):
                yield Static(id="prompt")
        yield ComparePanes(id="compare")
        yield KeyHints(HINTS)
        yield Footer()

    def on_mount(self) -> None:
        queue = self.queue
        self.app.lookup(lambda store: review.next_in_queue(store, queue), self.show)
        self.set_interval(EMPTY_RECHECK_S, self._recheck_when_empty)

    # --- showing -------------------------------------------------------------------------------
    def show(self, generation_id: int | None) -> None:
        store = self.app.store
        self.item = review.load_item(store, generation_id) if generation_id else None
        meta, instruction, output, prompt = (
            self.query_one(f"#{i}", Static) for i in ("meta", "instruction", "output", "prompt")
        )
        if self.item is None:
            meta.update(
                Text(
                    f"Nothing to review in this view ({self._describe_queue()}). New generations "
                    "appear as they are written: g generates, f changes the filter, b browses."
                )
            )
            for widget in (instruction, output, prompt):
                widget.update("")
            self._show_compare(False)
            self.query_one("#prompt-panel").display = False
            return
        self.query_one("#prompt-panel").display = True
        item = self.item
        self.last_seen_id = item.generation_id
        self.position = None
        self._show_meta()
        self.find_position(self.queue, item.generation_id)
        body = Text()
        body.append("Instruction\n", style="bold")
        body.append_text(plain(item.instruction))
        if item.input:
            body.append("\n\nInput\n", style="bold")
            body.append_text(plain(item.input))
        instruction.update(body)
        shown = Text()
        shown.append(
            "Edited response (original kept; d shows the diff)\n"
            if item.edited_response is not None
            else "Model output\n",
            style="bold",
        )
        shown.append_text(plain(item.response))
        output.update(shown)
        prompt.update(plain(item.prompt))
        self.query_one("#body", VerticalScroll).scroll_home(animate=False)
        self._show_compare(self.compare and item.samples > 1)

    def _show_compare(self, on: bool) -> None:
        """All samples of the instruction in their own panes, numbered as the keys that pick them."""
        self.set_class(on, "comparing")
        panes = self.query_one(ComparePanes)
        if on and self.item is not None:
            panes.show(review.samples_of(self.app.store, self.item.generation_id), self.item.generation_id)

    def _show_meta(self) -> None:
        """Two lines: where we are (position, queue filter) and what this generation is."""
        item = self.item
        if item is None:
            return
        flags = ", ".join(item.flags) or "no flags"  # no label: at 80 columns the style at the end stays in view
        decision = f" · {item.decision} by {item.reviewer}" if item.decision else ""
        where = (
            f"item {self.position[0]:,} of {self.position[1]:,}"
            if self.position and self.position[0]
            else "not in this queue"
            if self.position
            else "item … of …"
        )
        # one row each, most telling first: at 80 columns the tail is cut with an ellipsis, never wrapped out of sight
        self.query_one("#meta", Static).update(
            Text(
                f"{where} · queue: {self._describe_queue()}\n"
                f"#{item.generation_id}{decision} · {flags} · {item.completion_tokens} tok · {item.finish_reason} · "
                + (f"sample {item.sample_index + 1} of {item.samples} · " if item.samples > 1 else "")  # room at 80
                + f"{item.instruction_type} · {item.style}",
                no_wrap=True,
                overflow="ellipsis",
            )
        )

    @work(thread=True, exclusive=True, exit_on_error=False, group="position", description="queue position")
    def find_position(self, queue: QueueFilter, generation_id: int) -> None:
        """Counting the queue takes a moment on a million rows: off the event loop, shown when known.

        One query at a time on the screen's own connection; a request overtaken by the next item is
        dropped; the queue's length is counted again only when the queue changed or every few seconds
        (decisions made here adjust it meanwhile).
        """
        with self.position_lock:
            if get_current_worker().is_cancelled:
                return
            if self.reader is None:
                self.reader = review.open_database(self.app.db_path, migrate=False)
            cached = self.queue_total
            known = None  # the queue's length, if counted recently for this queue
            if cached is not None and cached[0] == queue and time.monotonic() - cached[2] < QUEUE_RECOUNT_S:
                known = cached[1]
            fresh = known is not None
            found = review.position(self.reader, queue, generation_id, known)
        if not get_current_worker().is_cancelled:
            self.app.call_from_thread(self._positioned, queue, generation_id, found, fresh)

    def _positioned(self, queue: QueueFilter, generation_id: int, found: tuple[int, int], cached: bool) -> None:
        if not cached and queue == self.queue:
            self.queue_total = (queue, found[1], time.monotonic())
        if self.item is not None and self.item.generation_id == generation_id:
            self.position = found
            self._show_meta()

    def counts_changed(self) -> None:
        """The header's counts moved (a generator or another reviewer beside the app): the queue's length the
        position line shows is counted again, or it would lag the header until the next key."""
        self.queue_total = None
        if self.item is not None:
            self.find_position(self.queue, self.item.generation_id)

    def _adjust_total(self, before: str | None, after: str | None) -> None:
        """A decision made here moves an item in or out of a state queue: keep the cached length in step."""
        if self.queue_total is None or self.queue.state == "all":
            return
        queue, total, at = self.queue_total
        state = self.queue.state
        was_in = (before is None) if state == "unreviewed" else before == state
        now_in = (after is None) if state == "unreviewed" else after == state
        self.queue_total = (queue, total - was_in + now_in, at)

    def on_unmount(self) -> None:
        if self.reader is not None:
            self.reader.close()

    def action_jump(self) -> None:
        from gristmill.app.tui.jump import JumpScreen

        def chosen(generation_id: int | None) -> None:
            if generation_id is None:
                return
            if review.load_item(self.app.store, generation_id) is None:
                self.notify(f"There is no generation #{generation_id}", severity="warning")
                return
            self.open(generation_id)

        self.app.push_screen(JumpScreen(), chosen)

    def open(self, generation_id: int) -> None:
        """Show one generation chosen elsewhere (browse, jump to id), whatever the queue's filter."""
        self.show(generation_id)

    def _describe_queue(self) -> str:
        q = self.queue
        parts = [q.state] + [
            f"{k}={v}"
            for k, v in (
                ("type", q.instruction_type),
                ("style", q.style),
                ("run", q.run_id),
                ("flag", q.flag),
                ("min", q.min_chars),
                ("max", q.max_chars),
            )
            if v
        ]
        return ", ".join(parts)

    def on_screen_resume(self) -> None:
        """Back from another room: what is shown may have changed meanwhile (a sample finished, a bulk decision)."""
        if self.item is not None:
            self.show(self.item.generation_id)

    def _samples_changed(self) -> bool:
        """Whether the samples on screen differ from the database (a pending one finished, another decided)."""
        if self.item is None or not self.has_class("comparing"):
            return False
        shown = [(s.generation_id, s.status, s.decision) for s in self.query_one(ComparePanes).samples]
        now = [
            (s.generation_id, s.status, s.decision) for s in review.samples_of(self.app.store, self.item.generation_id)
        ]
        return shown != now

    def _recheck_when_empty(self) -> None:
        """An empty view looks again for new work (in a thread: a filter matching nothing may scan a million rows)."""
        if self.item is not None and any(s.status == "pending" for s in self.query_one(ComparePanes).samples):
            if self._samples_changed():  # a sample being generated has finished: show it
                self._show_compare(True)
        if self.item is None and not self.app.looking_up:
            queue = self.queue

            def found(generation_id: int | None) -> None:
                if generation_id is not None and self.item is None and self.queue == queue:
                    self.show(generation_id)

            self.app.lookup(lambda store: review.next_in_queue(store, queue, after=0), found, background=True)

    def _advance(self) -> None:
        """After a decision: the next item in the queue after this one, else the first from the start."""
        current = self.item.generation_id if self.item else 0
        queue = self.queue
        self.app.lookup(
            lambda store: (
                review.next_in_queue(store, queue, after=current) or review.next_in_queue(store, queue, after=0)
            ),
            self.show,
        )

    # --- decisions ------------------------------------------------------------------------------
    def _decide(self, decision: str, edited: str | None = None, reason: str | None = None) -> None:
        if self.item is None:
            return
        item, reviewer = self.item, self.app.reviewer
        decided = item.generation_id

        def committed(_: object) -> None:
            self.app.note_decision(item.decision, decision)
            self._adjust_total(item.decision, decision)
            verb = {"accept": "Accepted", "reject": "Rejected", "skip": "Skipped"}[decision]
            because = f" ({reason})" if reason else ""
            self.notify(
                f"{verb} #{decided}{because}" + (" with your edit" if edited is not None else "") + " · u undoes"
            )
            self._remember(decided)
            self._advance()

        self.app.write(
            lambda store: review.decide(store, decided, decision, reviewer, edited, reason),
            committed,
            what=f"decision ({decision} #{decided}{' with an edit' if edited is not None else ''})",
        )

    def _remember(self, generation_id: int) -> None:
        """This sitting's path, so `k` returns to the item just decided even when it left the queue."""
        if not self.history or self.history[-1] != generation_id:
            self.history.append(generation_id)
        del self.history[:-HISTORY]

    def action_accept(self) -> None:
        self._decide("accept")

    def action_reject(self) -> None:
        self._decide("reject")

    def action_reject_reason(self) -> None:
        """Reject with a reason picked in a modal (the list is `[review] reject_reasons`)."""
        if self.item is None:
            return
        from gristmill.app.tui.reasons import ReasonScreen

        item = self.item

        def chosen(reason: str | None) -> None:
            if reason is not None and self.item is not None and self.item.generation_id == item.generation_id:
                self._decide("reject", reason=reason)  # which says so once it is saved

        self.app.push_screen(ReasonScreen(self.app.reject_reasons, item.generation_id), chosen)

    def action_skip(self) -> None:
        self._decide("skip")

    def action_undo(self) -> None:
        reviewer = self.app.reviewer
        self.app.write(lambda store: review.undo(store, reviewer), self._undone, what="undo")

    def _undone(self, touched: list[int]) -> None:
        if not touched:
            self.notify("Nothing to undo", severity="warning")
            return
        self.notify(f"Undid the decision on #{', #'.join(map(str, touched))}")
        self.queue_total = None  # the undone items went back to other queues: count this one again
        self.show(min(touched))
        self.app.refresh_counts()

    def action_best(self, k: int) -> None:
        if self.item is None:
            return
        if self._samples_changed():  # never decide on text the reviewer has not seen
            self._show_compare(True)
            self.notify(
                "The samples changed since they were shown (one finished or was decided): look again, then pick",
                severity="warning",
            )
            return
        generation_id, reviewer = self.item.generation_id, self.app.reviewer

        def picked(pick: Pick) -> None:
            if not pick.ok:
                self.notify(pick.message, severity="warning")
                return
            self.notify(pick.message)
            self.queue_total = None  # every sample of the instruction left the queue: count it again
            self._advance()
            self.app.refresh_counts()

        # a write like any decision: never waits for another process's lock on the event loop
        self.app.write(
            lambda store: review.pick_best(store, generation_id, k, reviewer), picked, what=f"pick (sample {k})"
        )

    def action_edit(self) -> None:
        if self.item is None:
            return
        from gristmill.app.textsafe import NotEditable
        from gristmill.app.tui.modals import EditScreen

        item = self.item
        # an edit that was undone is not lost: the editor offers it again
        last = review.last_edit(self.app.store, item.generation_id) if item.edited_response is None else None

        def saved(text: str | None) -> None:
            if text is not None and self.item is not None and self.item.generation_id == item.generation_id:
                self._decide("accept", None if text == item.completion else text)

        try:
            editor = EditScreen(
                last if last is not None else item.response,
                instruction=item.instruction,
                original=item.completion,
                restored=last is not None,
            )
        except NotEditable as why:
            self.notify(f"#{item.generation_id} cannot be edited here: {why}", severity="warning")
            return
        self.app.push_screen(editor, saved)

    def action_diff(self) -> None:
        if self.item is None:
            return
        from gristmill.app.tui.modals import TextScreen

        diff = review.unified_diff(self.item.completion, self.item.response)
        self.app.push_screen(TextScreen("Edited text against the model output", diff))

    def action_filter(self) -> None:
        from gristmill.app.tui.modals import FilterScreen

        def chosen(queue: QueueFilter | None) -> None:
            if queue is not None:
                self.queue = queue
                self.app.lookup(lambda store: review.next_in_queue(store, queue), self.show)

        self.app.push_screen(FilterScreen(self.queue, browse.choices(self.app.store)), chosen)

    # --- moving ---------------------------------------------------------------------------------
    def action_next(self) -> None:
        after = self.item.generation_id if self.item else self.last_seen_id
        found = review.next_in_queue(self.app.store, self.queue, after=after)
        if found is None:
            self.notify("End of the queue", severity="information")
            return
        if self.item is not None:
            self._remember(self.item.generation_id)
        self.show(found)

    def action_previous(self) -> None:
        """Back along this sitting's path first (the item just decided), then back through the queue."""
        current = self.item.generation_id if self.item else None
        while self.history and self.history[-1] == current:
            self.history.pop()
        if self.history:
            self.show(self.history.pop())
            return
        before = self.item.generation_id if self.item else self.last_seen_id + 1
        found = review.previous_in_queue(self.app.store, self.queue, before=before)
        if found is None:
            self.notify("Start of the queue", severity="information")
            return
        self.show(found)

    def action_toggle_compare(self) -> None:
        self.compare = not self.compare
        if self.item is not None and self.item.samples > 1:
            self._show_compare(self.compare)
        else:
            self.notify("Compare shows the samples of an instruction that has several", severity="information")

    def action_toggle_prompt(self) -> None:
        panel = self.query_one("#prompt-panel", Collapsible)
        panel.collapsed = not panel.collapsed
