"""The dashboard: header, stages, step metrics, VRAM/GPU/host panels, whole-run loss chart and the log tail."""
from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Footer

from nanotui.tui.model import RunSnapshot
from nanotui.tui.widgets.chart import LossChart
from nanotui.tui.widgets.panels import (HeaderBar, LogTail, MetricsPanel, StagesPanel, SystemPanel,
                                        VramPanel)


class DashboardScreen(Screen):
    BINDINGS = [
        Binding("d", "app.detach", "Detach"),
        Binding("q", "app.detach", "Detach", show=False),
        Binding("s", "app.stop", "Stop"),
        Binding("c", "app.checkpoints", "Ckpts"),
        Binding("l", "app.logs", "Logs"),
        Binding("o", "app.oom", "OOM", show=False),
        Binding("t", "app.cycle_chart", "Chart stage", show=False),
        Binding("r", "app.resume_latest", "Resume", show=False),
        Binding("question_mark,h,f1", "app.help", "Help"),
    ]

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
                chart.border_title = "loss"
                yield chart
                yield LogTail("log", id="logtail")
        yield Footer()

    def on_mount(self) -> None:
        snap = getattr(self.app, "snapshot", None)
        if snap is not None:
            self.show(snap)

    def show(self, snap: RunSnapshot) -> None:
        self.query_one(HeaderBar).show(snap)
        for panel in (StagesPanel, MetricsPanel, VramPanel, SystemPanel, LogTail):
            self.query_one(panel).show(snap)
        chart = self.query_one(LossChart)
        chart.set_data(snap.chart)
        title = f"loss · {snap.chart_stage}" if snap.chart_stage else "loss"
        if len(snap.training_stages) > 1:
            title += "  (t: next stage)"
        chart.border_title = title
