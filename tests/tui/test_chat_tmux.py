"""End-to-end in a real terminal: `nanotui attach` under tmux on a finished run with a (tiny, real) SFT model,
`m` opens the chat, a typed message gets a streamed reply from chat_web, Esc goes back, chat_web is stopped."""
from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import psutil
import pytest

from tmux_helpers import tmux, wait_for_screen
from tui_helpers import recorded

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "integration"))
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux not installed")]
SESSION = "nanotui-chat-e2e"


def wait_for(pattern: str, timeout: float) -> str:
    return wait_for_screen(SESSION, pattern, timeout)


def chat_servers(run_id: str) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info["cmdline"] or []
        if "nanochat.scripts.chat_web" in cmd and run_id in cmd:
            found.append(p)
    return found


def test_chat_from_the_dashboard_under_tmux(tmp_path):
    from chat_web_helpers import make_chat_checkpoint

    base, run_dir, _ = recorded("finished", tmp_path)
    make_chat_checkpoint(base, step=101, run_id=run_dir.name)
    exe = f"{sys.executable} -m nanotui.cli attach {run_dir.name}"
    env = f"NANOCHAT_BASE_DIR={base} PYTHONPATH={REPO}"
    tmux("kill-session", "-t", SESSION)
    try:
        tmux("new-session", "-d", "-s", SESSION, "-x", "140", "-y", "44", f"cd {REPO} && {env} {exe}")
        wait_for(r"DONE", timeout=60)
        wait_for(r"m Chat|Chat", timeout=10)
        tmux("send-keys", "-t", SESSION, "m")
        wait_for(r"Chat with .*chat_sft step 101", timeout=20)
        wait_for(r"ready · also in a browser on this machine: http://127\.0\.0\.1:\d+/", timeout=120)
        assert len(chat_servers(run_dir.name)) == 1
        tmux("send-keys", "-t", SESSION, "-l", "What is 12 + 30?")
        tmux("send-keys", "-t", SESSION, "Enter")
        screen = wait_for(r"(?m)^\s*ready\s*$", timeout=60)  # the status line after the reply finished
        assert "What is 12 + 30?" in screen and "(no reply)" not in screen and "chat unavailable" not in screen
        log = (run_dir / "chat_web.log").read_text()
        assert "chat request: 1 messages" in log
        tmux("send-keys", "-t", SESSION, "Escape")
        wait_for(r"DONE", timeout=20)
        deadline = time.time() + 20
        while chat_servers(run_dir.name) and time.time() < deadline:
            time.sleep(0.5)
        assert not chat_servers(run_dir.name), "chat_web still running after leaving the chat"
        tmux("send-keys", "-t", SESSION, "d")
        time.sleep(1)
    finally:
        tmux("kill-session", "-t", SESSION)
        for p in chat_servers(run_dir.name):
            p.kill()
