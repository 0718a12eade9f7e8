"""The dashboard on a run that diverged and rolled back: the onset (`!`) and the rollback (`↶`) on the loss chart,
in its legend, and a divergence/rollback event arriving while attached becomes a notice."""
from __future__ import annotations

import json

import pytest

from nanotui.core.notify import notice_for_event
from nanotui.tui.app import NanotuiApp
from nanotui.tui.model import RunView
from nanotui.tui.widgets.chart import ChartData, chart_legend, render_chart

from tui_helpers import FakeActions, FakeControl, recorded, wait_history

pytestmark = pytest.mark.anyio


async def test_chart_marks_the_onset_and_the_rollback(tmp_path):
    base, run_dir, now = recorded("diverged", tmp_path)
    app = NanotuiApp(run_dir=run_dir, base_dir=base, control=FakeControl(), actions=FakeActions(),
                     clock=lambda: now, poll_interval=None, theme="textual-dark")
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_history(pilot, app)
        markers = app.snapshot.chart.markers
        assert (62, "divergence") in markers and (50, "rollback") in markers
        xs = [x for x, _, _ in app.snapshot.chart.line]
        assert xs[0] == 0 and xs[-1] == 130   # steps 50..61 were logged twice: one point each


def test_legend_and_axis_show_the_marker_glyphs():
    data = ChartData(line=((0, 4.0, 4.0), (100, 3.0, 3.0)), markers=((62, "divergence"), (50, "rollback")),
                     x_max=100)
    assert "! divergence" in chart_legend(data, "blue", "magenta").plain
    assert "! div" in chart_legend(data, "blue", "magenta", short=True).plain
    axis = render_chart(data, 60, 12)[-2].plain
    assert "!" in axis and "↶" in axis


def test_divergence_and_rollback_events_are_announced(tmp_path):
    _, run_dir, now = recorded("diverged", tmp_path)
    view = RunView(run_dir, clock=lambda: now)
    view.attach()
    view.load_history()
    assert view.take_notices() == []  # the recorded rollback is history
    with open(run_dir / "events.jsonl", "a") as f:
        for ev in ({"t": now, "type": "divergence", "stage": "base_train", "step": 140, "cause": "nonfinite",
                    "message": "base_train step 140: non-finite loss; rollback 2/3 to step 125"},
                   {"t": now, "type": "rollback", "stage": "base_train", "from_step": 125,
                    "message": "base_train: rollback 2 to checkpoint step 125"}):
            f.write(json.dumps(ev) + "\n")
    view.poll()
    got = [(n.kind, n.severity) for n in view.take_notices()]
    assert got == [("divergence", "error"), ("rollback", "warning")]
    assert notice_for_event({"type": "rollback", "stage": "mid_train"}).message == "mid_train: rollback"
    view.close()
