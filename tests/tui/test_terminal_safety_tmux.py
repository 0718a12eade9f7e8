"""In a real terminal (tmux): control characters that a log line or a model reply carries (ESC c resets the terminal,
ESC [2J clears it, SO garbles it) are drawn harmlessly; the dashboard around them stays intact."""
from __future__ import annotations

import re
import shutil
import sys
import time
from pathlib import Path

import pytest

from tmux_helpers import tmux, wait_for_screen
from tui_helpers import recorded

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux not installed")  # fast: ~4 s
SESSION = "nanotui-escapes"


def wait_for(pattern: str, timeout: float) -> str:
    return wait_for_screen(SESSION, pattern, timeout)


def settled(timeout: float = 3.0) -> str:
    """The screen once it stops changing (a reset terminal keeps redrawing nothing; a sound one is stable)."""
    last, deadline = None, time.time() + timeout
    while time.time() < deadline:
        screen = tmux("capture-pane", "-p", "-t", SESSION)
        if screen == last:
            return screen
        last = screen
        time.sleep(0.7)
    return last or ""


def run_in_tmux(command: str, base: Path) -> None:
    tmux("kill-session", "-t", SESSION)
    tmux("new-session", "-d", "-s", SESSION, "-x", "140", "-y", "44",
         f"cd {REPO} && NANOCHAT_BASE_DIR={base} PYTHONPATH={REPO} {command}")


def test_hostile_log_lines_leave_the_dashboard_intact(tmp_path):
    base, run_dir, _ = recorded("finished", tmp_path)
    log = sorted((run_dir / "logs").glob("*.log"))[-1]
    with log.open("a") as f:  # what a stage may print: a stray reset, a clear, SO, an 8-bit CSI
        f.write("marker-one \x1bc after-reset\nmarker-two \x1b[2J after-clear\nmarker-three \x0e after-SO\n"
                "marker-four \x9b2J after-csi\n")
    try:
        run_in_tmux(f"{sys.executable} -m nanotui.cli attach {run_dir.name}", base)
        wait_for(r"DONE", timeout=60)
        screen = settled()
        for text in ("marker-one  after-reset", "marker-two  after-clear", "marker-three  after-SO",
                     "marker-four 2J after-csi"):
            assert text in screen, f"{text!r} missing; screen:\n{screen}"
        assert "DONE report 9/9" in screen and "─ stages ─" in screen, screen
    finally:
        tmux("kill-session", "-t", SESSION)


def test_hostile_chat_reply_is_drawn_not_obeyed(tmp_path):
    base, run_dir, _ = recorded("finished", tmp_path)
    run_in_tmux(f"{sys.executable} {HERE / 'escape_chat_app.py'} {base} {run_dir}", base)
    try:
        wait_for(r"DONE", timeout=60)
        tmux("send-keys", "-t", SESSION, "m")
        wait_for(r"ready · also in a browser", timeout=20)
        tmux("send-keys", "-t", SESSION, "-l", "What is 12 + 30?")
        tmux("send-keys", "-t", SESSION, "Enter")
        wait_for(r"end\.", timeout=20)
        screen = settled()
        assert "What is 12 + 30?" in screen, screen
        assert re.search(r"It is \ufffdcforty\ufffd\[2J two\ufffd \(sure\)\ufffd2J\ufffd+ end\.", screen), screen
        assert "Chat with" in screen, screen
    finally:
        tmux("kill-session", "-t", SESSION)
