"""Kill campaign: SIGKILL the supervisor AND its stage together at random moments (mid-step, mid-checkpoint), resume
each time; the run still finishes, every resume starts from a committed checkpoint of this run, nothing lingers."""
import json
import os
import random
import re
import signal
import sys
import time
from pathlib import Path

import pytest

from nanotui.core import ckpts
from nanotui.runtime import procs
from nanotui.runtime.launch import launch, resume_run
from nanotui.runtime.rundir import RunDir

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "fixtures"))
from fake_trainer import fake_plan, fake_stage  # noqa: E402

pytestmark = pytest.mark.slow  # ~20 supervisor + stage starts: 20-40 s on 2 shared cores



def kill_all(rd, sup_pid):
    st = rd.read_state()
    tree = procs.tree_snapshot(st.get("stage_pid"))
    os.kill(sup_pid, signal.SIGKILL)
    if st.get("stage_pid"):
        procs.signal_group(st["stage_pid"], signal.SIGKILL)
    procs.kill_snapshot(tree)
    deadline = time.monotonic() + 10
    while (procs.alive_of(tree) or procs.pid_matches(sup_pid, None) or rd.supervisor_alive()) and \
            time.monotonic() < deadline:
        time.sleep(0.02)


def wait_for_new_attempt(rd, timeout=30):
    """Until the supervisor runs a fresh attempt of the stage (after a re-adoption it first waits for the dead
    attempt's exit file), so that the kills land while the stage trains or checkpoints."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = rd.read_state()
        if st.get("phase") == "done" or (st.get("phase") == "running" and procs.pid_matches(
                st.get("stage_pid"), st.get("stage_pid_created")) and (rd.path / (st.get("log") or "x")).exists()):
            return
        time.sleep(0.02)


def test_random_sigkills_of_supervisor_and_stage_then_resume(base_dir):
    rng = random.Random(8)
    n = 150
    stage = fake_stage(num_iterations=n, save_every=3, step_time=0.02, save_time=0.05)
    rd = RunDir.create(base_dir, fake_plan(base_dir, [stage], stop_timeout=5))
    ckpt_dir = base_dir / "base_checkpoints" / "fake"
    # A foreign run's checkpoint far ahead in the same directory must never be resumed from. Its step is one this
    # run never saves itself (save_every=3), so the foreign files stay foreign to the end and are the only way a
    # resume can land on that step: a step the run committed itself is a legitimate resume point, however late.
    foreign = 100
    assert foreign % 3 and foreign < n
    ckpt_dir.mkdir(parents=True)
    (ckpt_dir / f"model_{foreign:06d}.pt").write_bytes(b"M" * 4096)
    (ckpt_dir / f"meta_{foreign:06d}.json").write_text(json.dumps(
        {"step": foreign, "run_id": "19990101-000000-other", "files": {f"model_{foreign:06d}.pt": 4096},
         "loop_state": {}}))
    pid = launch(rd)
    kills = 0
    for _ in range(8):
        wait_for_new_attempt(rd)
        time.sleep(rng.uniform(0.05, 0.8))
        if rd.read_state().get("phase") == "done":
            break
        kill_all(rd, pid)
        kills += 1
        pid = resume_run(rd)
    deadline = time.monotonic() + 120
    while rd.read_state().get("phase") != "done" and time.monotonic() < deadline:
        time.sleep(0.1)
    st = rd.read_state()
    assert st["phase"] == "done" and kills >= 3, (st["phase"], kills)
    assert st["last_checkpoint"]["step"] == n
    # every resume started from a step that a committed checkpoint of THIS run held
    mine = {c.step for c in ckpts.scan_dir(str(ckpt_dir)) if c.status == "valid" and c.run_id == rd.run_id}
    resumed = [int(m) for log in rd.list_logs() for m in re.findall(r"Resuming optimization from step (\d+)",
                                                                      log.read_text())]
    assert resumed and foreign not in resumed, f"resumed from the foreign run's step {foreign}: {resumed}"
    assert set(resumed) <= mine, (resumed, sorted(mine))
    assert foreign not in mine  # the foreign files are still there and still foreign
    # the last attempt trained to the end and no step was skipped after its resume point
    last = rd.list_logs()[-1].read_text()
    steps = [int(s) for s in re.findall(r"^step (\d+)/", last, re.M)]
    start = int(re.search(r"Resuming optimization from step (\d+)", last).group(1)) if "Resuming" in last else 0
    assert steps == list(range(start, n))
    deadline = time.monotonic() + 20
    while rd.supervisor_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not rd.supervisor_alive() and rd.read_state()["stage_pid"] is None
