"""Driving a real terminal in tests: tmux commands and waiting for a pattern on one session's screen."""
from __future__ import annotations

import re
import subprocess
import time


def tmux(*args: str) -> str:
    return subprocess.run(["tmux", *args], capture_output=True, text=True, timeout=30).stdout


def wait_for_screen(session: str, pattern: str, timeout: float) -> str:
    """The session's screen once `pattern` is on it; AssertionError with the last screen after `timeout`."""
    deadline = time.time() + timeout
    screen = ""
    while time.time() < deadline:
        screen = tmux("capture-pane", "-p", "-t", session)
        if re.search(pattern, screen):
            return screen
        time.sleep(0.5)
    raise AssertionError(f"{pattern!r} never appeared; last screen:\n{screen}")
