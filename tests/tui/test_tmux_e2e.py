"""End-to-end in a real terminal: `nanotui demo` under tmux, kill the session, re-attach with `nanotui`."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux not installed")]


def tmux(*args: str) -> str:
    return subprocess.run(["tmux", *args], capture_output=True, text=True, timeout=30).stdout


def capture(session: str) -> str:
    return tmux("capture-pane", "-p", "-t", session)


def wait_for(session: str, pattern: str, timeout: float) -> str:
    deadline = time.time() + timeout
    screen = ""
    while time.time() < deadline:
        screen = capture(session)
        if re.search(pattern, screen):
            return screen
        time.sleep(1.0)
    raise AssertionError(f"{pattern!r} never appeared; last screen:\n{screen}")


def steps_on(screen: str) -> int | None:
    m = re.search(r"step (\d[\d,]*)/", screen)
    return int(m.group(1).replace(",", "")) if m else None


def test_demo_under_tmux_then_reattach(base_dir):
    exe = f"{sys.executable} -m nanotui.cli"
    env = f"NANOCHAT_BASE_DIR={base_dir} PYTHONPATH={REPO}"
    s1, s2 = "nanotui-e2e-1", "nanotui-e2e-2"
    tmux("kill-session", "-t", s1)
    tmux("kill-session", "-t", s2)
    try:
        tmux("new-session", "-d", "-s", s1, "-x", "160", "-y", "48", f"cd {REPO} && {env} {exe} demo")
        screen = wait_for(s1, r"step \d+/\d+", timeout=900)  # data + tokenizer first, then base_train steps
        first = steps_on(screen)
        screen = wait_for(s1, r"step \d+/\d+", timeout=60)
        deadline = time.time() + 120
        while steps_on(screen) == first and time.time() < deadline:
            time.sleep(2)
            screen = capture(s1)
        assert steps_on(screen) > first, "steps do not advance"
        assert "train loss" in screen and re.search(r"[\u2801-\u28ff]", screen), "loss chart empty"
        assert "VRAM" in screen and ("host RAM" in screen or "free" in screen), "VRAM panel empty"
        assert re.search(r"CPU \d+%", screen), "CPU panel empty"
        tmux("kill-session", "-t", s1)  # the terminal goes away; the run must not
        time.sleep(3)
        tmux("new-session", "-d", "-s", s2, "-x", "160", "-y", "48", f"cd {REPO} && {env} {exe}")
        screen = wait_for(s2, r"step \d+/\d+", timeout=60)
        screen = wait_for(s2, r"RUNNING|WAITING|DONE", timeout=30)
        assert steps_on(screen) >= first
        # history from the start: the chart's x axis starts at 0 and the line begins at its left edge
        assert re.search(r"└[─┴↻✗b]+", screen) and re.search(r"│\s+0\s+\d[\d.k]*\s", screen)
        tmux("send-keys", "-t", s2, "d")
        time.sleep(2)
    finally:
        subprocess.run([sys.executable, "-m", "nanotui.cli", "stop"], cwd=REPO, timeout=120,
                       env={"NANOCHAT_BASE_DIR": str(base_dir), "PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
                       capture_output=True)
        tmux("kill-session", "-t", s1)
        tmux("kill-session", "-t", s2)
