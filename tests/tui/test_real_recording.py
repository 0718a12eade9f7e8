"""The dashboard on a run directory recorded by the REAL supervisor (fake trainer, OOM fallback), not make_runs.py."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from nanotui.runtime.rundir import RunDir
from nanotui.runtime.supervisor import spawn_supervisor
from nanotui.tui.app import NanotuiApp
from nanotui.tui.screens.checkpoints import CheckpointsScreen
from nanotui.tui.widgets.chart import LossChart
from nanotui.tui.widgets.panels import StagesPanel

from tui_helpers import FIXTURES, FakeControl, wait_history

sys.path.insert(0, str(FIXTURES))
from fake_trainer import fake_plan, fake_stage  # noqa: E402

pytestmark = pytest.mark.anyio
FAULT_ENV = {"NANOCHAT_FAULT_OOM_ABOVE_BS": "4", "FAKE_OOM_AFTER_STEP": "6"}


def quick_stage(name: str, text: str) -> dict:
    return {"name": name, "argv": [sys.executable, "-c", f"print({text!r})"], "env": {}, "trains": False,
            "ckpt_subdir": None, "total_batch_size": None, "device_bs": None}


@pytest.fixture(scope="module")
def recorded_run(tmp_path_factory) -> tuple[Path, Path]:
    """data -> base_train (OOM at batch 8 in step 7, grace 0 -> fallback to 4, resume) -> report, all real."""
    base = tmp_path_factory.mktemp("real")
    stages = [quick_stage("data", "data ready"),
              fake_stage(device_bs=8, num_iterations=12, save_every=4, step_time=0.02),
              quick_stage("report", "report written")]
    rd = RunDir.create(base, fake_plan(base, stages, grace=0, gpu_interval=0.2))
    saved = {k: os.environ.get(k) for k in FAULT_ENV}
    os.environ.update(FAULT_ENV)
    try:
        sup = spawn_supervisor(rd)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    try:
        assert sup.wait(30) == 0, (rd.path / "supervisor.log").read_text()
    finally:
        if sup.poll() is None:
            sup.kill()
            sup.wait()
    st = rd.read_state()
    assert st["phase"] == "done", st
    types = [e["type"] for e in rd.read_events()]
    assert "oom" in types and "fallback" in types  # the scenario this test is about really happened
    return base, rd.path


@pytest.mark.parametrize("size", [(80, 24), (160, 48)])
async def test_dashboard_reads_a_real_supervisor_recording(recorded_run, size):
    base, run_dir = recorded_run
    app = NanotuiApp(run_dir=run_dir, base_dir=base, control=FakeControl(), clock=time.time, poll_interval=None,
                     theme="textual-dark")
    async with app.run_test(size=size) as pilot:
        await wait_history(pilot, app)
        await pilot.pause(0.1)
        snap = app.snapshot
        assert snap.phase == "done" and snap.chart_stage == "base_train"
        # the fake trainer logs steps 0..5 at batch 8, OOMs in step 6 ("step 7"), then logs 6..11 at batch 4
        # after resuming from the emergency checkpoint of step 6 (6 steps done)
        xs = [x for x, _, _ in snap.chart.line]
        assert xs == list(range(0, 12))
        markers = snap.chart.markers
        assert all(isinstance(s, (int, float)) and not isinstance(s, bool) for s, _ in markers)
        kinds = {k for _, k in markers}
        assert {"checkpoint", "oom", "restart", "batch"} <= kinds, markers
        assert (6, "restart") in markers and (6, "batch") in markers
        assert [s for s, k in markers if k == "oom"] == [7]
        assert sorted(s for s, k in markers if k == "checkpoint") == [4, 6, 8, 12]
        chart = str(app.screen.query_one(LossChart).render())
        assert "loss" in chart and "✗" in chart and "↻" in chart and chart.rstrip().endswith("12")
        rows = {r.name: r for r in snap.stages}
        assert [r.state for r in snap.stages] == ["done", "done", "done"]
        assert rows["base_train"].attempts == 2 and rows["base_train"].device_bs == 4
        panel = app.screen.query_one(StagesPanel)
        shown = panel.rows(snap)
        assert any(name == "base_train a2" and glyph == "✔" for glyph, _, name, *_ in shown), shown

        await pilot.press("c")
        assert isinstance(app.screen, CheckpointsScreen)
        ckpts = app.screen.rows
        assert [(r.stage, r.step) for r in ckpts] == [("base_train", s) for s in (4, 6, 8, 12)]
        await pilot.press("escape")
