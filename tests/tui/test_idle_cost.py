"""Idle cost: unchanged data repaints nothing, live steps redraw the chart at a throttled pace, files not re-read."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest

from nanotui.tui.app import NanotuiApp
from nanotui.tui.messages import SnapshotUpdated
from nanotui.tui.model import RunView
from nanotui.tui.widgets.chart import LossChart
from nanotui.tui.widgets.panels import Panel

from tui_helpers import FakeControl, recorded, wait_history

pytestmark = pytest.mark.anyio


def repaints(app) -> dict[str, int]:
    return {w.id: w.repaints for w in app.screen.query(Panel)}


async def test_unchanged_snapshot_repaints_nothing_and_a_new_step_only_its_panels(tmp_path):
    base, run_dir, now = recorded("mid_training", tmp_path)
    app = NanotuiApp(run_dir=run_dir, base_dir=base, control=FakeControl(), clock=lambda: now, poll_interval=None,
                     theme="textual-dark")
    async with app.run_test(size=(160, 48)) as pilot:
        await wait_history(pilot, app)
        chart = app.screen.query_one(LossChart)
        before, drawn = repaints(app), chart.renders
        snap = app.snapshot
        app.post_message(SnapshotUpdated(replace(snap, now=snap.now + 1.0)))  # a poll where nothing changed
        await pilot.pause(0.1)
        assert repaints(app) == before and chart.renders == drawn
        app.post_message(SnapshotUpdated(replace(snap, now=snap.now + 2.0,
                                                 metrics=replace(snap.metrics, step=131, loss=4.25))))
        await pilot.pause(0.1)
        after = repaints(app)
        assert after["metrics"] == before["metrics"] + 1
        assert {k: v for k, v in after.items() if k != "metrics"} == {k: v for k, v in before.items() if k != "metrics"}
        assert "131" in str(app.screen.query_one("#metrics").render())


async def test_chart_throttles_live_steps_but_draws_a_new_series_at_once(tmp_path):
    base, run_dir, now = recorded("mid_training", tmp_path)
    app = NanotuiApp(run_dir=run_dir, base_dir=base, control=FakeControl(), clock=lambda: now, poll_interval=None,
                     theme="textual-dark")
    async with app.run_test(size=(160, 48)) as pilot:
        await wait_history(pilot, app)
        chart = app.screen.query_one(LossChart)
        chart.min_interval = 0.4
        data = chart.data
        chart.set_data(replace(data, line=data.line + ((131.0, 4.2, 4.2),)))
        await pilot.pause(0.05)
        drawn = chart.renders
        chart.set_data(replace(data, line=data.line + ((131.0, 4.2, 4.2), (132.0, 4.1, 4.1))))
        await pilot.pause(0.05)
        assert chart.renders == drawn, "a live step right after a redraw waits for the throttle"
        await pilot.pause(0.5)
        assert chart.renders == drawn + 1, "the deferred redraw happens"
        assert chart.data.line[-1][0] == 132.0
        chart.set_data(replace(data, title="mid_train"))  # another series: no waiting
        await pilot.pause(0.05)
        assert chart.renders == drawn + 2


def test_poll_skips_unchanged_files_and_reads_changed_ones(tmp_path, monkeypatch):
    _, run_dir, now = recorded("mid_training", tmp_path)
    view = RunView(run_dir, clock=lambda: now)
    view.attach()
    view.load_history()
    view.poll()
    calls = {"state": 0, "gpu": 0}
    real_state, real_gpu = view.rd.read_state, view.rd.read_gpu

    def read_state():
        calls["state"] += 1
        return real_state()

    def read_gpu(tail=None):
        calls["gpu"] += 1
        return real_gpu(tail=tail)
    monkeypatch.setattr(view.rd, "read_state", read_state)
    monkeypatch.setattr(view.rd, "read_gpu", read_gpu)
    view._alive_checked = float("inf")  # keep the slow periodic re-read out of this test
    view.poll()
    view.poll()
    assert calls == {"state": 0, "gpu": 0}
    sample = view.gpu_samples[-1]
    with open(run_dir / "gpu.jsonl", "a") as f:
        f.write(json.dumps({**sample, "t": sample["t"] + 1}) + "\n")
    state = json.loads((run_dir / "state.json").read_text())
    state["attempt"] = 3
    tmp = run_dir / "state.json.tmp"
    tmp.write_text(json.dumps(state))
    tmp.replace(run_dir / "state.json")
    snap = view.poll()
    assert calls == {"state": 1, "gpu": 1}
    assert snap.attempt == 3 and view.gpu_samples[-1]["t"] == sample["t"] + 1
