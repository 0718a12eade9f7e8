"""The dashboard's chat (m): refused in one line before an SFT checkpoint exists; with one, a real chat_web child
process streams a reply into the screen, Esc stops a reply (freeing the server's worker), Esc again goes back
and the child process is stopped."""
from __future__ import annotations

import json
import threading
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from nanotui.tui.app import NanotuiApp
from nanotui.tui.screens.chat import ChatScreen, reply_text
from nanotui.tui.screens.dashboard import DashboardScreen

from tui_helpers import FakeActions, FakeControl, recorded

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
pytestmark = pytest.mark.anyio


def app_for(run_dir, base, clock):
    return NanotuiApp(run_dir=run_dir, base_dir=base, control=FakeControl(), actions=FakeActions(), clock=clock,
                      poll_interval=None, theme="textual-dark")


def make_app(tmp_path, name):
    base, run_dir, now = recorded(name, tmp_path)
    return app_for(run_dir, base, lambda: now), base, run_dir


async def until(pilot, predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await pilot.pause(0.05)


def stats(url: str) -> dict:
    with urllib.request.urlopen(url + "stats", timeout=10) as r:
        return json.loads(r.read())


async def test_chat_key_before_sft_says_when_it_opens(tmp_path):
    app, _, _ = make_app(tmp_path, "mid_training")
    async with app.run_test(size=(140, 44)) as pilot:
        await until(pilot, lambda: app.snapshot is not None, 10, "the first snapshot")
        await pilot.press("m")
        await pilot.pause()
        assert isinstance(app.screen, DashboardScreen)
        notes = [n.message for n in app._notifications]
        assert any("no SFT checkpoint of this run yet" in m and "chat_sft" in m for m in notes), notes


def long_replies(app):
    """The real chat backend, with replies long enough to stop one midway."""
    real = app.chat_backend

    def backend(live):
        b = real(live)
        b.extra_args = tuple(b.extra_args) + ("--max_tokens", "4096")
        return b
    app.chat_backend = backend


async def test_chat_screen_streams_stops_and_closes_the_server(tmp_path, monkeypatch):
    from chat_web_helpers import make_chat_checkpoint

    # a tiny model on a quiet CPU samples its whole reply in about a second: pace it so that Esc lands mid-reply
    monkeypatch.setenv("NANOCHAT_FAULT_TOKEN_DELAY_S", "0.02")

    app, base, run_dir = make_app(tmp_path, "finished")
    long_replies(app)
    make_chat_checkpoint(base, step=101, run_id=run_dir.name)
    async with app.run_test(size=(140, 44)) as pilot:
        await until(pilot, lambda: app.snapshot is not None, 10, "the first snapshot")
        await pilot.press("m")
        await until(pilot, lambda: isinstance(app.screen, ChatScreen), 5, "the chat screen")
        chat = app.screen
        assert "chat_sft step 101" in str(chat.query_one("#chat-title").render())
        await until(pilot, lambda: chat.ready, 120, "chat_web to load the model")
        backend = chat.backend
        assert backend.proc is not None and backend.proc.poll() is None
        assert (run_dir / "chat_web.log").exists()
        url = backend.url
        # a reply streams in, then Esc stops it: the server's worker is free at once
        await pilot.press(*"hello", "enter")
        await until(pilot, lambda: len(chat.reply) > 20, 60, "streamed text")
        assert chat.streaming
        await pilot.press("escape")
        await until(pilot, lambda: chat.replies_done == 1, 10, "the stopped reply")
        assert isinstance(app.screen, ChatScreen)
        bubble = str(chat.query(".chat-assistant").last().render())
        assert "(stopped)" in bubble and chat.reply[:10] in bubble
        worker = stats(url)["workers"][0]
        assert worker["last_stopped"] == "cancelled" and not worker["busy"], worker
        assert [m["role"] for m in chat.messages] == ["user", "assistant"]
        # Esc again leaves the chat, and the chat_web process goes away
        proc = backend.proc
        await pilot.press("escape")
        await pilot.pause()
        assert isinstance(app.screen, DashboardScreen)
        deadline = time.monotonic() + 15
        while proc.poll() is None and time.monotonic() < deadline:
            await pilot.pause(0.1)
        assert proc.poll() is not None, "chat_web still running after leaving the chat"


def test_calculator_output_renders_as_chips():
    text = reply_text("It is <|python_start|>12+30<|python_end|><|output_start|>42<|output_end|>.")
    assert text.plain == "It is  calc 12+30  = 42 ."
    styles = {text.plain[s.start:s.end]: str(s.style) for s in text.spans}
    assert "yellow" in styles["12+30 "] and "green" in styles["42 "]


class FailingBackend:
    """Fails to start like a chat_web whose model cannot load; records close()."""

    def __init__(self, delay: float = 0.0):
        self.delay, self.closed = delay, threading.Event()

    def start(self, cancelled):
        if cancelled.wait(self.delay):
            raise RuntimeError("cancelled")
        raise RuntimeError("chat_web exited (2): error: no checkpoints in /x/chatsft_checkpoints [tag]")

    def stream(self, messages):
        raise AssertionError("never ready")

    def interrupt(self):
        pass

    def close(self):
        self.closed.set()


async def test_chat_that_cannot_start_says_why_and_leaving_early_is_safe(tmp_path):
    app, _, _ = make_app(tmp_path, "finished")
    async with app.run_test(size=(140, 44)) as pilot:
        await until(pilot, lambda: app.snapshot is not None, 10, "the first snapshot")
        screen = ChatScreen(FailingBackend(), "test")
        app.push_screen(screen)

        def status() -> str:
            found = screen.query("#chat-status")
            return str(found.first().render()) if found else ""
        await until(pilot, lambda: "chat unavailable" in status(), 5, "the failure line")
        assert "no checkpoints in /x/chatsft_checkpoints [tag]" in status() and not screen.ready
        await pilot.press("escape")
        await pilot.pause()
        assert isinstance(app.screen, DashboardScreen)
        # leave while the backend is still starting: it is cancelled and closed, the app keeps running
        slow = FailingBackend(delay=30)
        app.push_screen(ChatScreen(slow, "test"))
        await pilot.pause(0.2)
        await pilot.press("escape")
        await until(pilot, slow.closed.is_set, 5, "close() of the backend")
        await pilot.pause(0.3)
        assert isinstance(app.screen, DashboardScreen) and app.is_running


async def test_chat_serves_an_upstream_stages_checkpoint_without_a_run_id(tmp_path):
    """A run that supervised upstream nanochat's chat_sft (a dialect stage): upstream writes no run id, so the
    newest committed step of that stage's directory is this run's to chat with; chat_web is started without a run id
    and pinned to that tag and step. The same checkpoint in a run of our own stages stays another run's."""
    from chat_web_helpers import make_chat_checkpoint

    app, base, run_dir = make_app(tmp_path, "mid_training")
    make_chat_checkpoint(base, step=7, run_id=None)              # upstream: no run_id in the meta
    async with app.run_test(size=(140, 44)) as pilot:           # our stages: not this run's checkpoint
        await until(pilot, lambda: app.snapshot is not None, 10, "the first snapshot")
        await pilot.press("m")
        await pilot.pause()
        assert isinstance(app.screen, DashboardScreen)
        assert any("no SFT checkpoint of this run yet" in n.message for n in app._notifications)
    plan_path = run_dir / "run.json"
    plan = json.loads(plan_path.read_text())
    plan["stages"].append({"name": "chat_sft", "argv": ["python", "-m", "scripts.chat_sft"], "trains": True,
                           "dialect": {"version": "2025-11"},
                           "ckpt_dir": str(base / "chatsft_checkpoints" / "demo")})
    plan_path.write_text(json.dumps(plan))
    app2 = app_for(run_dir, base, app.clock)
    async with app2.run_test(size=(140, 44)) as pilot:
        await until(pilot, lambda: app2.snapshot is not None, 10, "the first snapshot")
        await pilot.press("m")
        await until(pilot, lambda: isinstance(app2.screen, ChatScreen), 5, "the chat screen")
        chat = app2.screen
        assert "chat_sft step 7" in str(chat.query_one("#chat-title").render())
        argv = chat.backend.argv()
        assert "--run_id" not in argv and argv[-4:] == ["--model_tag", "demo", "--step", "7"], argv
        await until(pilot, lambda: chat.ready, 120, "chat_web to load the upstream-style checkpoint")
        await pilot.press("escape")
        await pilot.pause()
        assert isinstance(app2.screen, DashboardScreen)
