"""An out-of-memory error in a torchrun rank is an OOM, not a crash: torchrun's ChildFailedError epilogue, printed
after the rank's own traceback, does not hide it (upstream's speedrun.sh launches every training stage this way;
so do our profiles with NPROC_PER_NODE > 1). A real CPU torchrun around the fake trainer."""
import os
import sys
import time
from pathlib import Path

import pytest

from nanotui.core.launchers import wraps_child_error
from nanotui.runtime.rundir import RunDir
from nanotui.runtime.supervisor import spawn_supervisor

REPO = Path(__file__).resolve().parents[2]
FAKE = REPO / "tests" / "fixtures" / "fake_trainer.py"
sys.path.insert(0, str(REPO / "tests" / "fixtures"))
from fake_trainer import fake_plan, fake_stage  # noqa: E402


def test_launcher_wrapper_errors_are_recognised():
    assert wraps_child_error("torch.distributed.elastic.multiprocessing.errors.ChildFailedError")
    assert not wraps_child_error("torch.OutOfMemoryError") and not wraps_child_error("")


@pytest.mark.slow   # torchrun start-up twice: ~15 s on 2 cores
def test_oom_in_a_torchrun_rank_falls_back(base_dir, monkeypatch):
    monkeypatch.setenv("NANOCHAT_FAULT_OOM_ABOVE_BS", "4")
    monkeypatch.setenv("FAKE_OOM_AFTER_STEP", "2")
    st = fake_stage(device_bs=8, num_iterations=6, save_every=2, step_time=0.02)
    st["argv"] = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", str(FAKE),
                  *st["argv"][2:]]
    rd = RunDir.create(base_dir, fake_plan(base_dir, [st], grace=0))
    sup = spawn_supervisor(rd)
    try:
        sup.wait(timeout=240)
    finally:
        if sup.poll() is None:
            sup.kill()
    events = rd.read_events()
    kinds = [e["type"] for e in events]
    log1 = rd.list_logs()[0].read_text()
    assert "ChildFailedError" in log1                      # the epilogue really was there
    assert "crashed" not in kinds and "oom" in kinds, kinds
    fb = next(e for e in events if e["type"] == "fallback")
    assert (fb["from_bs"], fb["to_bs"]) == (8, 4)
    assert rd.read_state()["phase"] == "done"
