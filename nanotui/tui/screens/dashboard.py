"""The dashboard: header, stages, step metrics, VRAM/GPU/host panels, whole-run loss chart and the log tail."""
from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.css.query import NoMatches
from textual.screen import Screen
from textual.widgets import Footer

from nanotui.tui.model import RunSnapshot
from nanotui.tui.widgets.chart import LossChart
from nanotui.tui.widgets.panels import (HeaderBar, LogTail, MetricsPanel, StagesPanel, SystemPanel,
                                        VramPanel, set_border)


class DashboardScreen(Screen):
    BINDINGS = [
        Binding("d", "app.detach", "Detach"),
        Binding("q", "app.detach", "Detach", show=False),
        Binding("s", "app.stop", "Stop"),
        Binding("c", "app.checkpoints", "Ckpts"),
        Binding("l", "app.logs", "Logs"),
        Binding("m", "app.chat", "Chat"),
        Binding("o", "app.oom", "OOM", show=False),
        Binding("t", "app.cycle_chart", "Chart stage", show=False),
        Binding("r", "app.resume_latest", "Resume", show=False),
        Binding("question_mark,h,f1", "app.help", "Help"),
    ]

    _panels: list | None = None

    def compose(self) -> ComposeResult:
        yield HeaderBar(id="header")
        with Horizontal(id="body"):
            with Vertical(id="side"):
                yield StagesPanel("stages", id="stages")
                yield MetricsPanel("training", id="metrics")
                yield VramPanel("VRAM", id="vram")
                yield SystemPanel("GPU / host", id="system")
            with Vertical(id="main"):
                chart = LossChart(id="chart")
                set_border(chart, title="loss")
                yield chart
                yield LogTail("log", id="logtail")
        yield Footer()

    def on_mount(self) -> None:
        snap = getattr(self.app, "snapshot", None)
        if snap is not None:
            self.show(snap)

    def show(self, snap: RunSnapshot) -> None:
        """Hand the snapshot to every panel; each repaints only if what it shows changed."""
        if self._panels is None:
            try:
                self._panels = [self.query_one(kind) for kind in (HeaderBar, StagesPanel, MetricsPanel, VramPanel,
                                                                  SystemPanel, LogTail, LossChart)]
            except NoMatches:  # not composed yet, or being torn down while a snapshot was in flight
                return
        if not self._panels[0].is_attached:
            return
        *panels, chart = self._panels
        for panel in panels:
            panel.show(snap)
        chart.set_data(snap.chart)
        title = f"loss · {snap.chart_stage}" if snap.chart_stage else "loss"
        if len(snap.training_stages) > 1:
            title += "  (t: next stage)"
        set_border(chart, title=title)
