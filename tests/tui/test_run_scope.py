"""Issue 8 in the dashboard: another run's checkpoints are marked and never resumed; disk full and a carried batch
size reach the header / notifications."""
import json
import time

import pytest

from nanotui.core.notify import notice_for_event
from nanotui.tui.model import RunView
from nanotui.tui.screens.checkpoints import CheckpointsScreen
from test_app import make_app
from tui_helpers import FakeControl, wait_history


@pytest.mark.anyio
async def test_other_runs_checkpoint_is_marked_and_refused(tmp_path):
    control = FakeControl()
    app, base, _ = make_app(tmp_path, control=control)
    d = base / "base_checkpoints" / "demo"
    (d / "model_000150.pt").write_bytes(b"M" * 64)
    (d / "meta_000150.json").write_text(json.dumps({"step": 150, "run_id": "20251231-000000-other",
                                                    "files": {"model_000150.pt": 64}}))
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_history(pilot, app)
        await pilot.press("c")
        assert isinstance(app.screen, CheckpointsScreen)
        rows = app.screen.rows
        assert rows[-1].step == 150 and rows[-1].other_run and not any(r.other_run for r in rows[:-1])
        await pilot.press("r")  # the cursor starts on the newest row: the other run's
        await pilot.pause()
        assert control.sent == []
        await pilot.press("up", "r")
        await pilot.pause()
        assert control.sent == [("resume", {"step": 125})]


def test_disk_full_problem_and_carried_batch_reach_the_dashboard(tmp_path):
    from tui_helpers import recorded
    _, run_dir, now = recorded("mid_training", tmp_path)
    st = json.loads((run_dir / "state.json").read_text())
    st["problem"] = "disk full: cannot write events.jsonl (No space left on device); the stage goes on"
    (run_dir / "state.json").write_text(json.dumps(st))
    view = RunView(run_dir, clock=lambda: now)
    snap = view.attach()
    assert snap.problem.startswith("disk full")
    with open(run_dir / "events.jsonl", "a") as f:
        for ev in ({"type": "carried_bs", "stage": "mid_train", "device_bs": 2, "seq_len": 1024,
                    "from_stage": "base_train", "message": "mid_train: starting at device_batch_size=2 (planned 4)"},
                   {"type": "disk_full", "where": "state.json", "message": "disk full: cannot write state.json"}):
            f.write(json.dumps({"t": time.time(), **ev}) + "\n")
    view.poll()
    kinds = [(n.kind, n.severity) for n in view.take_notices()]
    assert ("carried_bs", "warning") in kinds and ("disk_full", "error") in kinds
    assert notice_for_event({"type": "carried_bs", "message": "x"}).kind == "carried_bs"
    view.close()
