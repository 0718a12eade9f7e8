"""A real 2-rank CPU torchrun stage (ranks in sessions of their own): stop, and supervisor SIGKILL + re-adopt + stop
leave no rank running; torchrun's own shutdown timeout follows --stop-timeout (issue 8 item 5)."""
import os
import re
import signal
import sys
import time
from pathlib import Path

import psutil
import pytest

from nanotui.runtime import procs
from nanotui.runtime.control import ControlClient
from nanotui.runtime.rundir import RunDir
from nanotui.runtime.supervisor import spawn_supervisor

REPO = Path(__file__).resolve().parents[2]
FAKE = REPO / "tests" / "fixtures" / "fake_trainer.py"
sys.path.insert(0, str(REPO / "tests" / "fixtures"))
from fake_trainer import fake_plan, fake_stage  # noqa: E402

pytestmark = pytest.mark.slow  # torch.distributed in three processes: ~15-30 s per test on 2 cores


def torchrun_stage(**flags):
    st = fake_stage(num_iterations=100000, save_every=0, step_time=0.05, **flags)
    st["argv"] = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(FAKE),
                  *st["argv"][2:]]
    st["world_size"] = 2
    return st


def wait_for(pred, timeout=120, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def rank_pids(rd):
    log = rd.read_state().get("log")
    if not log or not (rd.path / log).exists():
        return {}
    text = (rd.path / log).read_text(errors="replace")
    return {int(r): int(p) for r, p in re.findall(r"rank (\d+) pid (\d+)", text)}


def alive(pid):
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


STARTED = []


@pytest.fixture(autouse=True)
def reap_leftovers():
    """Whatever a failing test leaves running (supervisor, torchrun, ranks) is killed, by pid."""
    yield
    while STARTED:
        rd, sup = STARTED.pop()
        pids = [sup.pid] + list(rank_pids(rd).values())
        pids += [p for p, _ in procs.tree_snapshot(rd.read_state().get("stage_pid"))]
        for p in pids:
            try:
                os.kill(p, signal.SIGKILL)
            except OSError:
                pass


def start(base_dir, stop_timeout=3):
    rd = RunDir.create(base_dir, fake_plan(base_dir, [torchrun_stage(ignore_term=1)], stop_timeout=stop_timeout))
    sup = spawn_supervisor(rd)
    STARTED.append((rd, sup))
    pids = wait_for(lambda: len(rank_pids(rd)) == 2 and rank_pids(rd), what="both ranks")
    wait_for(lambda: (rd.read_state().get("step") or 0) >= 2, what="progress")
    # the ranks really are outside the stage's process group (what made them escape a group SIGKILL)
    assert os.getpgid(pids[1]) != rd.read_state()["stage_pid"]
    return rd, sup, pids


def test_stop_leaves_no_rank_running(base_dir):
    rd, sup, pids = start(base_dir)
    assert ControlClient(rd).request("stop")["ok"]
    assert sup.wait(120) == 0
    assert not [p for p in pids.values() if alive(p)], "a rank outlived the stop"
    st = rd.read_state()
    assert st["phase"] == "stopped"
    log = (rd.path / st["log"]).read_text()
    assert "rank 1 ignores SIGTERM" in log  # it got exactly the SIGTERM torchrun forwards, then only SIGKILL


def test_sigkilled_supervisor_readopts_and_stops_the_whole_tree(base_dir):
    rd, sup, pids = start(base_dir)
    time.sleep(1.5)  # the tree is saved to state.json about once a second
    os.kill(sup.pid, signal.SIGKILL)
    sup.wait()
    assert all(alive(p) for p in pids.values())  # the stage goes on without its supervisor
    sup2 = spawn_supervisor(rd)
    STARTED.append((rd, sup2))
    wait_for(lambda: "adopted" in [e["type"] for e in rd.read_events()], what="adopted")
    assert ControlClient(rd).request("stop")["ok"]
    assert sup2.wait(120) == 0
    assert not [p for p in pids.values() if alive(p)], "a rank outlived the stop after re-adoption"
    assert rd.read_state()["phase"] == "stopped"


def test_torchrun_shutdown_timeout_follows_stop_timeout(base_dir):
    """Read off the live torchrun agent the supervisor started, not off a private helper's return value."""
    rd, sup, pids = start(base_dir, stop_timeout=7.5)
    agent_env = psutil.Process(rd.read_state()["stage_pid"]).environ()
    assert agent_env.get("TORCH_ELASTIC_SHUTDOWN_TIMEOUT") == "8"
    assert agent_env.get("NANOCHAT_RUN_ID") == rd.run_id
    assert psutil.Process(pids[1]).environ().get("NANOCHAT_RUN_ID") == rd.run_id  # and it reaches the ranks
    assert ControlClient(rd).request("stop")["ok"]
    assert sup.wait(120) == 0
