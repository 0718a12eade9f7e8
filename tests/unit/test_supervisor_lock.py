"""The supervisor's flock: a start is not refused because another process was probing `supervisor_alive()` at that
moment (a dashboard polls it every second); a lock held by a live supervisor still refuses."""
import fcntl
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from nanotui.runtime.rundir import RunDir
from nanotui.runtime.daemon import LOCK_SETTLE_S, SupervisorBusy, acquire_lock

PLAN = {"profile": "lock", "stages": []}
REPO = Path(__file__).resolve().parents[2]


def _hold(rd, mode, seconds):
    """Another open file description holding the run's lock (as another process would) for `seconds`."""
    fd = os.open(rd.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, mode)

    def release():
        time.sleep(seconds)
        os.close(fd)
    t = threading.Thread(target=release)
    t.start()
    return t


def test_a_status_probe_in_progress_does_not_refuse_the_start(base_dir):
    """A probe's shared flock (held 0.2 s here: a probing process descheduled under load between its flock and its
    close) used to make the new supervisor exit with "already has a supervisor" although none was running."""
    rd = RunDir.create(base_dir, PLAN)
    probe = _hold(rd, fcntl.LOCK_SH, 0.2)
    t0 = time.monotonic()
    fd = acquire_lock(rd)
    probe.join()
    assert time.monotonic() - t0 < LOCK_SETTLE_S
    assert rd.supervisor_alive()
    os.close(fd)
    assert not rd.supervisor_alive()


def test_a_live_supervisors_lock_still_refuses(base_dir):
    rd = RunDir.create(base_dir, PLAN)
    owner = _hold(rd, fcntl.LOCK_EX, LOCK_SETTLE_S + 1.0)
    t0 = time.monotonic()
    with pytest.raises(SupervisorBusy, match="already has a supervisor"):
        acquire_lock(rd)
    assert LOCK_SETTLE_S <= time.monotonic() - t0 < LOCK_SETTLE_S + 0.5
    owner.join()


def test_starts_under_a_probing_process_never_fail(base_dir):
    """The race as it happens: another process probes in a tight loop (open, shared flock, close), as a dashboard
    or `watch nanotui status` does; without the settle window about 1 start in 100 was refused."""
    rd = RunDir.create(base_dir, PLAN)
    code = ("import sys, time\nfrom nanotui.runtime.rundir import RunDir\nrd = RunDir(sys.argv[1])\n"
            "print('probing', flush=True)\nend = time.monotonic() + 30\n"
            "while time.monotonic() < end: rd.supervisor_alive()")
    prober = subprocess.Popen([sys.executable, "-c", code, str(rd.path)], stdout=subprocess.PIPE, text=True,
                              cwd=str(REPO), env=dict(os.environ, PYTHONPATH=str(REPO)))
    try:
        assert prober.stdout.readline().strip() == "probing"
        for _ in range(2000):
            os.close(acquire_lock(rd))
    finally:
        prober.kill()
        prober.wait()
