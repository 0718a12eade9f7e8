"""Helpers shared by the supervisor integration tests: run the CLI, launch a supervised fake run, wait for a state."""
import os
import subprocess
import sys
import time
from pathlib import Path

from nanotui.runtime.rundir import RunDir
from nanotui.runtime.supervisor import spawn_supervisor

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "fixtures"))
from fake_trainer import fake_plan  # noqa: E402


def cli(*args, timeout=60, env=None):
    """`nanotui ARGS` as a subprocess (plain output, no stdin)."""
    e = dict(os.environ, PYTHONPATH=str(REPO), NANOTUI_PLAIN="1", **(env or {}))
    return subprocess.run([sys.executable, "-m", "nanotui.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env=e, stdin=subprocess.DEVNULL)


def launch(base_dir, stages, **kw):
    rd = RunDir.create(base_dir, fake_plan(base_dir, stages, **kw))
    return rd, spawn_supervisor(rd)


def wait_for(pred, timeout=30, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")
