"""Dashboard notifications: new important events become one toast + bell/OSC 9; history at attach stays quiet."""
import json
import time

import pytest

from nanotui.core.notify import notice_for_event, notifications_enabled, sanitize_message, terminal_notification
from nanotui.tui.app import NanotuiApp
from nanotui.tui.model import RunView
from tui_helpers import FakeControl, FakeActions, recorded, wait_history

OOM_EVENT = {"type": "oom", "stage": "base_train", "step": 140, "device_bs": 4, "exit_code": 3,
             "emergency_step": 139, "ckpt_step": 139}
OOM_TEXT = "base_train: out of memory at device_batch_size=4, step 140; checkpoint at step 139"


def _append(run_dir, ev: dict) -> None:
    with open(run_dir / "events.jsonl", "a") as f:
        f.write(json.dumps({"t": time.time(), **ev}) + "\n")


def _history_kinds(run_dir) -> set:
    return {json.loads(line)["type"] for line in (run_dir / "events.jsonl").read_text().splitlines() if line}


def test_formatter_strips_control_characters_and_bounds_length():
    seq = terminal_notification("evil\x1b]52;c;AAAA\x07\nnext\x9bline\rend" + "x" * 500)
    assert seq.startswith("\a\x1b]9;nanotui: ") and seq.endswith("\x07")
    body = seq[len("\a\x1b]9;nanotui: "):-1]
    assert not any(ord(c) < 32 or 127 <= ord(c) < 160 for c in body)
    assert body.startswith("evil ]52;c;AAAA next line end") and len(body) == 200 and body.endswith("…")
    assert sanitize_message("a\tb\x00c") == "a b c"


def test_notice_texts_and_opt_out():
    n = notice_for_event(OOM_EVENT)
    assert (n.kind, n.message, n.severity) == ("oom", OOM_TEXT, "error")
    assert notice_for_event({"type": "stage_done", "stage": "mid_train", "message": "mid_train done"}).severity \
        == "information"
    assert notice_for_event({"type": "checkpoint", "stage": "base_train", "step": 5}) is None
    assert notice_for_event({"type": "stage_started", "stage": "base_train"}) is None
    assert not notifications_enabled({"NANOTUI_NO_NOTIFY": "1"}) and notifications_enabled({})


def test_run_view_announces_only_events_after_attach(tmp_path):
    _, run_dir, now = recorded("mid_training", tmp_path)
    assert "oom" in _history_kinds(run_dir)  # the recording holds an earlier OOM: history, not news
    view = RunView(run_dir, clock=lambda: now)
    view.attach()
    view.load_history()  # re-reads events.jsonl from the start: still no news
    assert view.take_notices() == []
    _append(run_dir, OOM_EVENT)
    _append(run_dir, {"type": "checkpoint", "stage": "base_train", "step": 139})
    view.poll()
    assert [(n.kind, n.message) for n in view.take_notices()] == [("oom", OOM_TEXT)]
    view.poll()
    assert view.take_notices() == []
    view.close()


@pytest.mark.anyio
async def test_app_toasts_and_rings_once_for_a_new_oom(tmp_path, monkeypatch):
    monkeypatch.delenv("NANOTUI_NO_NOTIFY", raising=False)
    base, run_dir, now = recorded("mid_training", tmp_path)
    app = NanotuiApp(run_dir=run_dir, base_dir=base, control=FakeControl(), actions=FakeActions(),
                     clock=lambda: now, poll_interval=0.05, theme="textual-dark")
    toasts = []
    real_notify = app.notify
    app.notify = lambda message, **kw: (toasts.append((message, kw.get("severity"))), real_notify(message, **kw))
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_history(pilot, app)
        await pilot.pause(0.2)
        assert toasts == [] and list(app.terminal_notices) == []  # the recorded OOM is history
        _append(run_dir, OOM_EVENT)
        for _ in range(100):
            await pilot.pause(0.05)
            if toasts:
                break
        await pilot.pause(0.2)
        assert toasts == [(OOM_TEXT, "error")]
        assert list(app.terminal_notices) == [f"\a\x1b]9;nanotui: {OOM_TEXT}\x07"]


@pytest.mark.anyio
async def test_opt_out_keeps_the_toast_but_not_the_bell(tmp_path, monkeypatch):
    monkeypatch.setenv("NANOTUI_NO_NOTIFY", "1")
    base, run_dir, now = recorded("mid_training", tmp_path)
    app = NanotuiApp(run_dir=run_dir, base_dir=base, control=FakeControl(), actions=FakeActions(),
                     clock=lambda: now, poll_interval=0.05, theme="textual-dark")
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_history(pilot, app)
        _append(run_dir, {"type": "stage_done", "stage": "base_train", "message": "base_train done"})
        for _ in range(100):
            await pilot.pause(0.05)
            if app._notifications:
                break
        assert [n.message for n in app._notifications] == ["base_train done"]
        assert list(app.terminal_notices) == []


def test_plain_attach_uses_the_same_formatter_and_opt_out(monkeypatch):
    import io

    from nanotui.cli import notify_terminal
    monkeypatch.delenv("NANOTUI_NO_NOTIFY", raising=False)
    out = io.StringIO()
    notify_terminal("run done\x1b[2J", out)
    assert out.getvalue() == terminal_notification("run done\x1b[2J") == "\a\x1b]9;nanotui: run done [2J\x07"
    monkeypatch.setenv("NANOTUI_NO_NOTIFY", "1")
    out = io.StringIO()
    notify_terminal("run done", out)
    assert out.getvalue() == ""
