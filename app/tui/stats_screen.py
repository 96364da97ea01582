"""The stats room: how the data set is shaping up, in pictures (plotext charts, a throughput sparkline).

The numbers come from `app.stats.collect_all`, the same function as `gristmill stats --json`, read
in a thread worker (grouping a million rows takes a moment) and refreshed whenever the room is shown.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, VerticalScroll
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, Header, Label, Sparkline, Static
from textual.worker import get_current_worker
from textual_plotext import PlotextPlot

from gristmill.app import review
from gristmill.app.stats import collect_all
from gristmill.app.tui.keyhints import KeyHints

if TYPE_CHECKING:
    from textual import getters

    from gristmill.app.tui.app import GristmillApp

GROUPS = (("type", "type"), ("style", "style (pool)"), ("reviewer", "reviewer"), ("flag", "flag"))
HINTS = (("refresh_stats", "refresh"),)


@dataclass
class StatsLoaded(Message):
    data: dict


def summary(data: dict) -> Text:
    g, d = data["generations"], data["decisions"]
    text = Text()
    text.append("generations ", style="bold")
    text.append(" · ".join(f"{k} {g.get(k, 0):,}" for k in ("done", "pending", "refused", "failed")))
    text.append("\ndecisions   ", style="bold")
    text.append(" · ".join(f"{k} {d.get(k, 0):,}" for k in ("unreviewed", "accept", "reject", "skip")))
    text.append(f"\n{data['instructions']['total']:,} instructions · {data['runs']['total']} run(s)")
    return text


class StatsScreen(Screen):
    if TYPE_CHECKING:  # the app's own attributes (store, db_path, ...) for the type checker; at run time, Textual's
        app = getters.app(GristmillApp)

    CSS_PATH = "stats_screen.tcss"
    BINDINGS = [Binding("r", "refresh_stats", "Refresh", id="refresh_stats", show=False)]

    def __init__(self) -> None:
        super().__init__()
        self.data: dict | None = None

    def compose(self) -> ComposeResult:
        yield Header()
        with VerticalScroll(id="stats"):
            yield Static("Counting…", id="summary")
            with Grid(id="rates"):
                for key, _ in GROUPS:
                    yield PlotextPlot(id=f"by-{key}", classes="rate-plot")
            yield PlotextPlot(id="lengths")
            yield Label("throughput", id="throughput-label")
            yield Sparkline([], id="throughput")
        yield KeyHints(HINTS)
        yield Footer()

    def on_screen_resume(self) -> None:
        self.load()

    def action_refresh_stats(self) -> None:
        self.load()

    @work(thread=True, exclusive=True, exit_on_error=False, group="stats", description="collect stats")
    def load(self) -> None:
        with review.open_database(self.app.db_path, migrate=False) as store:
            data = collect_all(store)
        if not get_current_worker().is_cancelled:
            self.post_message(StatsLoaded(data))

    def on_stats_loaded(self, message: StatsLoaded) -> None:
        self.data = data = message.data
        self.query_one("#summary", Static).update(summary(data))
        for key, title in GROUPS:
            self._rates(self.query_one(f"#by-{key}", PlotextPlot), title, data["acceptance"][key])
        self._lengths(data["response_lengths"])
        t = data["throughput"]
        self.query_one("#throughput", Sparkline).data = t["generations"] or [0]
        label = (
            f"throughput, run {t['run_id']}: generations per minute over {len(t['minutes'])} minute(s), "
            f"peak {max(t['generations'], default=0)}"
            if t["run_id"]
            else "throughput: no run yet"
        )
        self.query_one("#throughput-label", Label).update(label)

    @staticmethod
    def _rates(widget: PlotextPlot, title: str, groups: dict) -> None:
        plt = widget.plt
        plt.clear_data()
        plt.clear_figure()
        names = [name for name, c in groups.items() if c["rate"] is not None]
        if names:
            plt.bar(
                [n[:12] for n in names],
                [round(100 * groups[n]["rate"]) for n in names],
                orientation="horizontal",
                width=0.3,
            )
            plt.xlim(0, 100)
        plt.title(f"accept % by {title}" + ("" if names else ": none yet"))
        widget.refresh()

    def _lengths(self, hist: dict) -> None:
        widget = self.query_one("#lengths", PlotextPlot)
        plt = widget.plt
        plt.clear_data()
        plt.clear_figure()
        if any(hist["accept"]) or any(hist["reject"]):
            last = max(i for i in range(len(hist["bins"])) if hist["accept"][i] or hist["reject"][i]) + 1
            labels = [str(b) for b in hist["bins"][:last]]
            series = [hist["accept"][:last], hist["reject"][:last]]
            # textual-plotext 1.0.1's stub names the keyword `label`; plotext's multiple_bar takes `labels` (one per
            # series; `label=` is a TypeError at run time): a stub gap, not ours
            plt.multiple_bar(labels, series, labels=["accepted", "rejected"])  # type: ignore[call-arg]
        plt.title(f"response length (characters, bins of {hist['bin_chars']}): accepted vs rejected")
        widget.refresh()
