"""Pilot tests: every screen and key of the dashboard, driven from recorded run directories."""
from __future__ import annotations

import pytest

from nanotui.tui.app import NanotuiApp
from nanotui.tui.screens.checkpoints import CheckpointsScreen
from nanotui.tui.screens.dashboard import DashboardScreen
from nanotui.tui.screens.dialogs import ConfirmScreen, HelpScreen, OomScreen
from nanotui.tui.screens.logs import LogsScreen
from nanotui.tui.screens.start import NewRunScreen, StartScreen, parse_overrides
from nanotui.tui.widgets.chart import LossChart

from tui_helpers import FakeActions, FakeControl, app_without_run, recorded, wait_history

pytestmark = pytest.mark.anyio


def make_app(tmp_path, name="mid_training", control=None, actions=None, **kw):
    base, run_dir, now = recorded(name, tmp_path)
    app = NanotuiApp(run_dir=run_dir, base_dir=base, control=control or FakeControl(), actions=actions or FakeActions(),
                     clock=lambda: now, poll_interval=None, theme="textual-dark", **kw)
    return app, base, run_dir


def screen_text(app) -> str:
    return "\n".join(str(w.render()) for w in app.screen.query("Static"))


async def test_dashboard_shows_run_state_metrics_and_whole_run_chart(tmp_path):
    app, _, _ = make_app(tmp_path)
    async with app.run_test(size=(160, 48)) as pilot:
        await wait_history(pilot, app)
        assert isinstance(app.screen, DashboardScreen)
        snap = app.snapshot
        assert (snap.phase, snap.stage, snap.attempt, snap.device_bs, snap.seq_len) == ("running", "base_train", 2, 4, 256)
        assert snap.metrics.step == 130 and snap.metrics.total == 200
        # whole run: attempt 1 steps 0..61, OOM in step 62 (the trainer reports it as "step 63"), emergency
        # checkpoint 62, attempt 2 resumes from 62 at batch 4: no step lost or repeated
        xs = [x for x, _, _ in snap.chart.line]
        assert xs[0] == 0 and xs[-1] == 130 and len(xs) == 131
        kinds = {k for _, k in snap.chart.markers}
        assert [s for s, k in snap.chart.markers if k == "oom"] == [63]
        assert (62, "restart") in snap.chart.markers and (62, "batch") in snap.chart.markers
        assert {"checkpoint", "oom", "restart", "batch"} <= kinds
        assert [s for s, _ in snap.chart.points] == [0, 50, 100]
        text = screen_text(app)
        for needle in ("RUNNING", "DEVICE_BS", "SEQ_LEN", "W&B", "base_train", "130", "tok/s", "MFU", "lrm",
                       "G free", "CPU", "RAM"):
            assert needle in text, needle
        chart = str(app.screen.query_one(LossChart).render())
        assert "train loss" in chart and "val bpb" in chart and "step" in chart
        assert any(0x2800 < ord(c) <= 0x28FF for c in chart), "braille plot expected"


async def test_no_gpu_shows_reason_and_host_memory(tmp_path):
    app, _, _ = make_app(tmp_path, "finished")
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_history(pilot, app)
        vram = str(app.screen.query_one("#vram").render())
        assert "no GPU" in vram and "NVIDIA driver" in vram and "host RAM" in vram
        assert app.snapshot.phase == "done"
        assert app.snapshot.training_stages == ("base_train", "mid_train", "chat_sft")


async def test_detach_sends_nothing_and_exits(tmp_path):
    control = FakeControl()
    app, _, run_dir = make_app(tmp_path, control=control)
    before = (run_dir / "state.json").read_text()
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_history(pilot, app)
        await pilot.press("d")
        await pilot.pause()
    assert control.sent == []
    assert app.return_code == 0
    assert (run_dir / "state.json").read_text() == before


async def test_q_also_detaches(tmp_path):
    control = FakeControl()
    app, _, _ = make_app(tmp_path, control=control)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_history(pilot, app)
        await pilot.press("q")
        await pilot.pause()
    assert control.sent == [] and app.return_code == 0


async def test_stop_needs_confirmation(tmp_path):
    control = FakeControl()
    app, _, _ = make_app(tmp_path, control=control)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_history(pilot, app)
        await pilot.press("s")
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("n")
        assert control.sent == []
        await pilot.press("s")
        await pilot.press("y")
        await pilot.pause()
        assert control.sent == [("stop", {})]
        assert isinstance(app.screen, DashboardScreen)


async def test_oom_dialog_appears_and_buttons_send_commands(tmp_path):
    control = FakeControl()
    app, _, _ = make_app(tmp_path, "oom_pending", control=control)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_history(pilot, app)
        assert isinstance(app.screen, OomScreen)
        text = screen_text(app)
        # the trainer reports the OOM in step 92 and leaves an emergency checkpoint of the 91 finished steps
        assert "base_train" in text and "step 92" in text and "DEVICE_BS=8" in text and "step 91" in text
        assert "automatic choice in" in text and "batch 4" in text
        ids = [b.id for b in app.screen.query("Button")]
        assert ids == ["fallback-4", "fallback-2", "fallback-1", "retry", "stop"]
        await pilot.click("#fallback-2")
        await pilot.pause()
        assert control.sent == [("fallback", {"device_bs": 2})]
        assert not isinstance(app.screen, OomScreen)
        # reopen with `o`; retry and stop go out as their own commands
        await pilot.press("o")
        assert isinstance(app.screen, OomScreen)
        await pilot.press("r")
        await pilot.pause()
        await pilot.press("o")
        await pilot.click("#stop")
        await pilot.pause()
        await pilot.press("o")
        await pilot.press("1")
        await pilot.pause()
        assert control.sent[1:] == [("retry", {}), ("stop", {}), ("fallback", {"device_bs": 4})]


async def test_oom_dialog_escape_keeps_run_waiting(tmp_path):
    control = FakeControl()
    app, _, _ = make_app(tmp_path, "oom_pending", control=control)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_history(pilot, app)
        await pilot.press("escape")
        await pilot.pause()
        assert isinstance(app.screen, DashboardScreen)
        assert control.sent == []


async def test_oom_command_failure_is_reported_and_dialog_stays(tmp_path):
    control = FakeControl(alive=False)
    app, _, _ = make_app(tmp_path, "oom_pending", control=control)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_history(pilot, app)
        await pilot.click("#fallback-4")
        await pilot.pause()
        assert isinstance(app.screen, OomScreen)


async def test_checkpoints_resume_selected_and_copy_path(tmp_path):
    control = FakeControl()
    app, base, _ = make_app(tmp_path, control=control)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_history(pilot, app)
        await pilot.press("c")
        assert isinstance(app.screen, CheckpointsScreen)
        rows = app.screen.rows
        # retention (keep_last=3 + best val bpb) left 75, 100, 125; the emergency step 62 is gone
        assert [r.step for r in rows] == [75, 100, 125]
        assert all(r.status == "valid" for r in rows)
        assert rows[1].val_bpb == pytest.approx(3.1 * 2.718281828 ** (-100 / 260) + 1.05, abs=1e-3)
        assert rows[0].val_bpb is None  # evaluated only every 50 steps
        await pilot.press("up", "up")  # cursor starts on the newest (125) -> 75
        await pilot.press("y")
        assert app.copied == str(base / "base_checkpoints" / "demo" / "model_000075.pt")
        await pilot.press("r")
        await pilot.pause()
        assert control.sent == [("resume", {"step": 75})]
        await pilot.press("escape")
        assert isinstance(app.screen, DashboardScreen)


async def test_resume_without_supervisor_uses_runtime_action(tmp_path):
    actions = FakeActions()
    app, _, run_dir = make_app(tmp_path, "finished", control=FakeControl(alive=False), actions=actions)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_history(pilot, app)
        await pilot.press("c")
        await pilot.press("enter")
        await pilot.pause()
        assert actions.calls == [("resume", run_dir.name, 100)]
        await pilot.press("escape")
        await pilot.press("r")
        await pilot.pause()
        assert actions.calls[-1] == ("resume", run_dir.name, None)


async def test_invalid_checkpoint_is_marked_and_refused(tmp_path):
    control = FakeControl()
    app, base, _ = make_app(tmp_path, control=control)
    (base / "base_checkpoints" / "demo" / "model_000125.pt").write_bytes(b"short")
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_history(pilot, app)
        await pilot.press("c")
        assert app.screen.rows[-1].status == "invalid"
        await pilot.press("r")
        await pilot.pause()
        assert control.sent == []


async def test_logs_screen_filter_search_and_switch(tmp_path):
    app, _, run_dir = make_app(tmp_path)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_history(pilot, app)
        await pilot.press("l")
        screen = app.screen
        assert isinstance(screen, LogsScreen)
        assert screen.logs[screen.index].name == "02-base_train-a2.log"
        assert any(s.startswith("step 00130/00200") for s in screen.shown)
        await pilot.press("slash")
        await pilot.press(*"checkpoint saved")
        await pilot.press("enter")
        await pilot.pause()
        assert screen.filter == "checkpoint saved"
        assert [s.split()[3] for s in screen.shown] == ["000075", "000100", "000125"]  # attempt 2 ran 50..130
        await pilot.press("n")
        assert screen.match_pos == 0
        await pilot.press("left_square_bracket")
        assert screen.logs[screen.index].name == "02-base_train-a1.log"
        assert any("OOM: CUDA out of memory" in s for s in screen.follower.lines)
        # follows the tail: append a line to the log being shown
        with open(screen.logs[screen.index], "a") as f:
            f.write("Checkpoint saved: step 000999 -> /x\n")
        screen.poll()
        assert screen.shown[-1].endswith("/x")
        await pilot.press("escape")
        assert isinstance(app.screen, DashboardScreen)


async def test_help_and_command_palette(tmp_path):
    app, _, _ = make_app(tmp_path)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_history(pilot, app)
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        await pilot.press("f1")
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        titles = [c.title for c in app.get_system_commands(app.screen)]
        assert {"Stop the run", "Retry the stage", "OOM grace: wait for me", "Checkpoints", "Logs"} <= set(titles)


async def test_palette_grace_command_sends_set_grace(tmp_path):
    control = FakeControl()
    app, _, _ = make_app(tmp_path, control=control)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_history(pilot, app)
        cmd = next(c for c in app.get_system_commands(app.screen) if c.title == "OOM grace: wait for me")
        cmd.callback()
        assert control.sent == [("set_grace", {"grace": "off"})]


async def test_chart_cycles_training_stages(tmp_path):
    base, run_dir, now = recorded("finished", tmp_path)
    app = NanotuiApp(run_dir=run_dir, base_dir=base, control=FakeControl(), clock=lambda: now, poll_interval=0.05,
                     theme="textual-dark")
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_history(pilot, app)
        assert app.snapshot.chart_stage == "chat_sft"
        await pilot.press("t")
        for _ in range(100):
            await pilot.pause(0.05)
            if app.snapshot.chart_stage == "base_train":
                break
        assert app.snapshot.chart_stage == "base_train"
        assert app.snapshot.chart.x_max == 200


async def test_live_follow_picks_up_new_steps(tmp_path):
    base, run_dir, now = recorded("mid_training", tmp_path)
    app = NanotuiApp(run_dir=run_dir, base_dir=base, control=FakeControl(), clock=lambda: now, poll_interval=0.05,
                     theme="textual-dark")
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_history(pilot, app)
        with open(run_dir / "logs" / "02-base_train-a2.log", "a") as f:
            f.write("step 00131/00200 (65.50%) | loss: 4.300000 | lrm: 1.00 | dt: 1850.00ms | tok/sec: 4,428 | "
                    "mfu: 31.40 | total time: 2.60m\n")
        for _ in range(100):
            await pilot.pause(0.05)
            if app.snapshot.metrics.step == 131:
                break
        assert app.snapshot.metrics.step == 131 and app.snapshot.metrics.loss == pytest.approx(4.3)
        assert app.snapshot.log_tail[-1].startswith("step 00131")


async def test_start_screen_lists_runs_resumes_newest_and_starts_new(tmp_path):
    app, actions, run_dir = app_without_run(tmp_path)
    async with app.run_test(size=(120, 30)) as pilot:
        await pilot.pause()
        assert isinstance(app.screen, StartScreen)
        runs = app.screen.runs
        assert [r.run_id for r in runs] == [run_dir.name]
        assert runs[0].newest_checkpoint["step"] == 100
        await pilot.press("n")
        assert isinstance(app.screen, NewRunScreen)
        await pilot.click("#overrides")
        await pilot.press(*"DEVICE_BS=4")
        await pilot.press("enter")
        await pilot.pause()
        assert actions.calls == [("start", "cpu-demo", {"DEVICE_BS": "4"})]
        assert isinstance(app.screen, DashboardScreen)
        await wait_history(pilot, app)
        assert app.snapshot.run_id == run_dir.name


async def test_start_screen_resume_key(tmp_path):
    base, run_dir, now = recorded("finished", tmp_path)
    actions = FakeActions()
    app = NanotuiApp(run_dir=None, base_dir=base, control=FakeControl(), actions=actions, clock=lambda: now,
                     poll_interval=None, theme="textual-dark")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        await pilot.press("r")
        await pilot.pause()
        assert actions.calls == [("resume", run_dir.name, None)]
        assert isinstance(app.screen, DashboardScreen)


async def test_empty_base_dir_offers_new_run(tmp_path):
    app = NanotuiApp(run_dir=None, base_dir=tmp_path, control=FakeControl(), actions=FakeActions(),
                     poll_interval=None, theme="textual-dark")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        assert "No runs yet" in str(app.screen.query_one("#start-title").render())
        await pilot.press("q")
    assert app.return_code == 0


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
def test_parse_overrides_rejects_garbage(anyio_backend):
    assert parse_overrides("device_bs=4, SEQ_LEN=512") == {"DEVICE_BS": "4", "SEQ_LEN": "512"}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_overrides("DEVICE_BS")


@pytest.mark.parametrize("size", [(80, 24), (200, 60)])
async def test_readable_at_small_and_large_sizes(tmp_path, size):
    app, _, _ = make_app(tmp_path)
    async with app.run_test(size=size) as pilot:
        await wait_history(pilot, app)
        chart = app.screen.query_one(LossChart)
        assert chart.content_size.width >= 30 and chart.content_size.height >= 6
        assert "130" in str(app.screen.query_one("#metrics").render())
        assert "free" in str(app.screen.query_one("#vram").render())


async def test_no_color_is_respected(tmp_path, monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")
    app, _, _ = make_app(tmp_path)
    assert app.no_color


async def test_supervisor_shaped_resume_events_do_not_break_the_chart(tmp_path):
    """The real supervisor records `resumed` with step "latest" (and fallbacks with from_bs/to_bs): the chart
    resolves them to the newest checkpoint instead of crashing on a str step."""
    import json
    import time as _time

    app, _, run_dir = make_app(tmp_path)
    with open(run_dir / "events.jsonl", "a") as f:
        for ev in ({"type": "fallback", "stage": "base_train", "from_bs": 4, "to_bs": 2, "resume": "latest"},
                   {"type": "resumed", "stage": "base_train", "step": "latest", "device_bs": 2},
                   {"type": "stage_started", "stage": "base_train", "attempt": 3, "device_bs": 2}):
            f.write(json.dumps({"t": _time.time(), **ev}) + "\n")
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_history(pilot, app)
        await pilot.pause(0.2)
        markers = app.snapshot.chart.markers
        assert all(isinstance(s, (int, float)) for s, _ in markers)
        ckpts = [s for s, k in markers if k == "checkpoint"]
        assert (max(ckpts), "restart") in markers and (max(ckpts), "batch") in markers
        chart = str(app.screen.query_one(LossChart).render())
        assert "step" in chart


# ---- VRAM plan (issue 12): the start screen's plan and auto option, the VRAM panel's predicted-peak marker ----

async def test_new_run_screen_shows_vram_plan_and_auto_option(tmp_path):
    from textual.widgets import Checkbox, Select

    from nanotui.core.plan import build_plan
    from nanotui.core.vram import gpu_spec
    from nanotui.core.vramplan import plan_vram
    app, actions, run_dir = app_without_run(tmp_path)
    async with app.run_test(size=(140, 40)) as pilot:
        await pilot.pause()
        await pilot.press("n")
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, NewRunScreen)
        plan_text = lambda: str(screen.query_one("#vram-plan").render())  # noqa: E731
        assert "names no GPU" in plan_text()                   # cpu-demo trains on the CPU
        screen.query_one("#profile", Select).value = "4090"
        await pilot.pause()
        expected = plan_vram(build_plan("4090").to_dict(), gpu_spec("4090"))[0]
        text = plan_text()
        assert "RTX 4090" in text and "base_train B=4" in text
        assert f"{expected.chosen}*:{expected.row(expected.chosen).train_gib:.1f}" in text
        screen.query_one("#auto-bs", Checkbox).value = True
        await pilot.pause()
        assert "base_train auto" in plan_text() and "chat_sft   auto" in plan_text()
        await pilot.click("#start")
        await pilot.pause()
    assert actions.calls == [("start", "4090", {"DEVICE_BS": "auto"})]


async def test_vram_panel_marks_the_predicted_peak(tmp_path):
    import json

    from nanotui.core.vramplan import expected_peak
    app, _, run_dir = make_app(tmp_path)
    async with app.run_test(size=(160, 48)) as pilot:
        await wait_history(pilot, app)
        snap = app.snapshot
        g = snap.gpu
        assert g.available and snap.device_bs == 4
        plan = json.loads((run_dir / "run.json").read_text())
        want = expected_peak(plan, "base_train", 4, g.name, g.mem_total)
        assert want is not None and snap.vram_predicted_gib == pytest.approx(want)
        panel = app.screen.query_one("#vram")
        bar_line = str(panel.render()).splitlines()[1]
        assert bar_line.count("│") == 1 and bar_line.index("│") == int(want * 2**30 / g.mem_total * len(bar_line))
        assert panel.border_subtitle == f"│ predicted {want:.1f}G"
