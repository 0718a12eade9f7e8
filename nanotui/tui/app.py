"""The Textual app: wires the data worker (RunView snapshots), the screens, keys, palette commands and control client."""
from __future__ import annotations

import os
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Callable, Iterable, Protocol

from textual.app import App, SystemCommand
from textual.screen import Screen
from textual.worker import get_current_worker

from nanotui.tui import coreapi
from nanotui.tui.messages import RunNotice, SnapshotUpdated
from nanotui.core.runstate import LIVE_PHASES
from nanotui.tui.model import (CheckpointRow, RunSnapshot, RunView, base_dir_of, list_checkpoints,
                               upstream_checkpoint_dirs)
from nanotui.tui.screens.chat import ChatScreen
from nanotui.tui.screens.checkpoints import CheckpointsScreen
from nanotui.tui.screens.dashboard import DashboardScreen
from nanotui.tui.screens.dialogs import ConfirmScreen, HelpScreen, OomScreen
from nanotui.tui.screens.logs import LogsScreen
from nanotui.tui.screens.start import StartScreen


class Control(Protocol):
    def request(self, cmd: str, **args) -> dict: ...


class RunActions:
    """What the TUI does itself when no supervisor is alive: start a run, resume one — through the same start path
    as the CLI (nanotui.runtime.launch: plan checks, one run per checkpoint directory, confirmed spawn).

    Tests pass a fake with the same two methods. Errors are StartError with a one-line message."""

    def start(self, base_dir: Path, profile: str, overrides: dict) -> Path:
        from nanotui.runtime.launch import profile_plan, start_plan
        plan = profile_plan(profile, overrides, python=sys.executable)
        rd, _pid = start_plan(plan, Path(base_dir), cwd=os.getcwd())
        return rd.path

    def check(self, base_dir: Path, profile: str, overrides: dict) -> list[str]:
        """The preflight alone (`nanotui start --dry-run`): one line per finding; nothing started or written."""
        from nanotui.runtime.launch import StartError, profile_plan
        from nanotui.runtime.preflight import format_findings, run_preflight
        try:
            plan = profile_plan(profile, overrides, python=sys.executable)
        except StartError as exc:
            return [f"refused: {exc}"]
        plan.update(base_dir=str(base_dir), cwd=os.getcwd())
        findings, seconds = run_preflight(plan, Path(base_dir))
        verdict = "refused" if any(f.level == "error" for f in findings) else "would start"
        return format_findings(findings) + [f"preflight: {verdict} ({seconds:.1f} s; nothing started)"]

    def default_profile(self) -> str | None:
        """The profile the new-run dialog preselects: NANOTUI_PROFILE or `profile` in the user's config file."""
        from nanotui.runtime import settings
        try:
            return settings.effective()["profile"].value
        except settings.ConfigError:
            return None   # starting will say what is wrong with the file

    def resume(self, run_dir: Path, step: int | None = None, device_bs: int | None = None) -> None:
        from nanotui.runtime.launch import resume_run
        from nanotui.runtime.rundir import RunDir
        resume_run(RunDir(run_dir), step, device_bs)


def terminal_theme() -> str:
    """Follow the terminal: NANOTUI_THEME wins, else COLORFGBG's background (7 or 9-15 = light), else dark."""
    forced = os.environ.get("NANOTUI_THEME")
    if forced:
        return {"light": "textual-light", "dark": "textual-dark"}.get(forced, forced)
    bg = os.environ.get("COLORFGBG", "").split(";")[-1]
    if bg.isdigit() and (int(bg) == 7 or 9 <= int(bg) <= 15):
        return "textual-light"
    return "textual-dark"


class NanotuiApp(App):
    CSS_PATH = "app.tcss"
    TITLE = "nanotui"
    ENABLE_COMMAND_PALETTE = True

    def __init__(self, run_dir: Path | None = None, base_dir: Path | None = None, control: Control | None = None,
                 actions: RunActions | None = None, clock: Callable[[], float] = time.time,
                 poll_interval: float | None = 1.0, theme: str | None = None):
        super().__init__()
        self.run_dir = Path(run_dir) if run_dir else None
        self.base_dir = Path(base_dir) if base_dir else (base_dir_of(self.run_dir) if self.run_dir else Path("."))
        self._control = control
        self._control_given = control is not None
        self.actions = actions or RunActions()
        self.clock = clock
        self.poll_interval = poll_interval
        self.snapshot: RunSnapshot | None = None
        self.oom_dismissed: tuple | None = None
        self.copied: str | None = None
        self.chart_choice: str | None = None
        self._wake = threading.Event()
        self._painted = threading.Event()
        self.first_paint_at: float | None = None
        self.painted_at: float | None = None
        self.history_at: float | None = None
        self.theme = theme or terminal_theme()
        self.terminal_notify = coreapi.notifications_enabled(os.environ)
        self.terminal_notices: deque[str] = deque(maxlen=32)  # the bell + OSC 9 sequences emitted, newest last

    # ---- lifecycle ---------------------------------------------------------------------------
    def on_mount(self) -> None:
        if self.run_dir is None:
            self.push_screen(StartScreen(self.base_dir))
        else:
            self.push_screen(DashboardScreen())
            self._start_data()

    def on_resize(self, event) -> None:
        self.screen.set_class(event.size.width < 110, "narrow")
        self.screen.set_class(event.size.height < 34, "short")

    def on_screen_resume(self) -> None:
        size = self.size
        self.screen.set_class(size.width < 110, "narrow")
        self.screen.set_class(size.height < 34, "short")

    def _start_data(self) -> None:
        self.run_worker(self._data_loop, thread=True, exclusive=True, group="data", name="run-data")

    def _data_loop(self) -> None:
        """Worker thread: owns the RunView; first paint from the tail, history next, then follow."""
        worker = get_current_worker()
        view = RunView(self.run_dir, clock=self.clock)
        try:
            self.post_message(SnapshotUpdated(view.attach()))
            self._painted.wait(3.0)  # let the first paint happen before history parsing competes for the GIL
            if worker.is_cancelled:
                return
            view.chart_stage = self.chart_choice
            self.post_message(SnapshotUpdated(view.load_history()))
            self._post_notices(view)
            while self.poll_interval and not worker.is_cancelled:
                self._wake.wait(self.poll_interval)
                self._wake.clear()
                if worker.is_cancelled:
                    break
                view.chart_stage = self.chart_choice
                snap = view.poll()
                if snap != self.snapshot:
                    self.post_message(SnapshotUpdated(snap))
                self._post_notices(view)
        finally:
            view.close()

    def _post_notices(self, view: RunView) -> None:
        for notice in view.take_notices():
            self.post_message(RunNotice(notice))

    def on_run_notice(self, message: RunNotice) -> None:
        """A toast in the app, plus a bell and an OSC 9 desktop notification through the driver."""
        notice = message.notice
        self.notify(notice.message, title=notice.kind.replace("_", " "), severity=notice.severity,
                    timeout=10 if notice.severity == "error" else 6)
        if not self.terminal_notify:
            return
        sequence = coreapi.terminal_notification(notice.message)
        self.terminal_notices.append(sequence)
        driver = self._driver
        if driver is not None and not self.is_headless:  # as App.bell/copy_to_clipboard write raw sequences
            driver.write(sequence)

    def on_snapshot_updated(self, message: SnapshotUpdated) -> None:
        snap = message.snapshot
        if self.snapshot is not None and snap.now == self.snapshot.now and snap == self.snapshot:
            return
        self.snapshot = snap
        for screen in self.screen_stack:
            if isinstance(screen, DashboardScreen):
                screen.show(snap)
        if self.first_paint_at is None:
            self.first_paint_at = time.perf_counter()
            self.call_after_refresh(self._first_painted)
        if snap.history_loaded and self.history_at is None:
            self.history_at = time.perf_counter()
        self._sync_oom(snap)

    def _first_painted(self) -> None:
        """Runs after the screen holding the first snapshot was rendered (the benchmark's 'first full paint')."""
        self.painted_at = time.perf_counter()
        self._painted.set()

    def _sync_oom(self, snap: RunSnapshot) -> None:
        open_dialogs = [s for s in self.screen_stack if isinstance(s, OomScreen)]
        for dialog in open_dialogs:
            dialog.update_pending(snap.pending_oom)
        p = snap.pending_oom
        if not p:
            self.oom_dismissed = None
            return
        if open_dialogs or self.oom_dismissed == (p.get("stage"), p.get("step")):
            return
        self.action_oom()

    # ---- control -----------------------------------------------------------------------------
    @property
    def control(self) -> Control | None:
        if self._control is None and self.run_dir is not None:
            from nanotui.runtime.control import ControlClient
            self._control = ControlClient(self.run_dir, timeout=5)
        return self._control

    def supervisor_listening(self) -> bool:
        ctl = self.control
        available = getattr(ctl, "available", None)
        return bool(ctl) and (available() if callable(available) else True)

    def send_command(self, cmd: str, **args) -> bool:
        """Send one control command; a clear notification either way. True when the supervisor accepted it."""
        ctl = self.control
        if ctl is None:
            self.notify("no run attached", severity="error")
            return False
        try:
            reply = ctl.request(cmd, **args)
        except OSError as exc:
            self.notify(f"{cmd}: no supervisor is listening ({exc})", severity="error")
            return False
        if not reply or not reply.get("ok", False):
            self.notify(f"{cmd}: {reply.get('error', 'refused') if reply else 'no reply'}", severity="error")
            return False
        detail = " ".join(f"{k}={v}" for k, v in args.items())
        self.notify(f"sent {cmd} {detail}".rstrip())
        self._wake.set()
        return True

    # ---- actions (keys) ----------------------------------------------------------------------
    def action_detach(self) -> None:
        """Leave the run alone: nothing is sent; the supervisor keeps going."""
        self.exit(0)

    def action_stop(self) -> None:
        if self.run_dir is None:
            return

        def answer(yes: bool | None) -> None:
            if yes:
                self.send_command("stop")
        self.push_screen(ConfirmScreen("Stop the run? The current stage checkpoints and exits; "
                                       "`nanotui resume` continues it later.", "Stop"), answer)

    def action_checkpoints(self) -> None:
        if not isinstance(self.screen, CheckpointsScreen):
            self.push_screen(CheckpointsScreen(self.base_dir, clock=self.clock,
                                               run_id=self.run_dir.name if self.run_dir else None))

    def sft_checkpoint(self) -> CheckpointRow | None:
        """This run's newest usable SFT checkpoint (None before chat_sft has saved one)."""
        if self.run_dir is None:
            return None
        upstream = upstream_checkpoint_dirs(self.run_dir)
        rows = [r for r in list_checkpoints(self.base_dir, self.run_dir.name)
                if r.stage == "chat_sft" and r.status != "invalid"
                and (not r.other_run or (r.run_id is None and os.path.normpath(os.path.dirname(r.path)) in upstream))]
        return rows[-1] if rows else None

    def action_chat(self) -> None:
        """Chat with this run's SFT model through a chat_web child process (on the CPU while the run trains)."""
        if isinstance(self.screen, ChatScreen):
            return
        row = self.sft_checkpoint()
        if row is None:
            self.notify("no SFT checkpoint of this run yet: the chat opens once chat_sft has saved one",
                        severity="warning")
            return
        snap = self.snapshot
        live = bool(snap and snap.phase in LIVE_PHASES)
        backend = self.chat_backend(live)
        where = "CPU, the run is training" if live else "auto device"
        self.push_screen(ChatScreen(backend, f"{self.run_dir.name} · chat_sft step {row.step} ({where})"))

    def chat_backend(self, live: bool):
        """chat_web serving exactly the checkpoint the chat's title names (model tag and step); an upstream stage's
        checkpoint carries no run id, so it is served without one."""
        from nanotui.runtime.chatweb import ChatWebProcess
        row = self.sft_checkpoint()
        run_id = self.run_dir.name if row is None or row.run_id is not None else None
        pin = ("--model_tag", os.path.basename(os.path.dirname(row.path)), "--step", str(row.step)) if row else ()
        return ChatWebProcess(self.base_dir, run_id, self.run_dir / "chat_web.log",
                              device_type="cpu" if live else None, extra_args=pin)

    def action_logs(self) -> None:
        if self.run_dir is not None and not isinstance(self.screen, LogsScreen):
            self.push_screen(LogsScreen(self.run_dir, poll_interval=self.poll_interval))

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    def action_oom(self) -> None:
        snap = self.snapshot
        if not snap or not snap.pending_oom:
            self.notify("no OOM decision pending")
            return
        if any(isinstance(s, OomScreen) for s in self.screen_stack):
            return
        p = snap.pending_oom
        ladder = list(p.get("ladder") or [])
        if not ladder and p.get("device_bs"):
            from nanotui.core.oom import fallback_ladder
            ladder = fallback_ladder(int(p["device_bs"]), None)
        self.push_screen(OomScreen(p, snap.last_checkpoint, ladder, self.clock))

    def action_cycle_chart(self) -> None:
        snap = self.snapshot
        if not snap or len(snap.training_stages) < 2:
            self.notify("only one training stage to chart so far")
            return
        stages = list(snap.training_stages)
        cur = snap.chart_stage if snap.chart_stage in stages else stages[-1]
        self.chart_choice = stages[(stages.index(cur) + 1) % len(stages)]
        if not self.poll_interval:  # no follower thread: rebuild once
            self._start_data()
        self._wake.set()

    def action_resume_latest(self) -> None:
        self.resume_from(None)

    def resume_from(self, row: CheckpointRow | None) -> None:
        """Resume at `row` (or the newest checkpoint): through the supervisor when one listens, else spawn one."""
        step = row.step if row is not None else None
        snap = self.snapshot
        if row is not None and snap and snap.stage and row.stage != snap.stage and snap.phase != "done":
            self.notify(f"step {row.step} belongs to {row.stage}; the run is at {snap.stage}", severity="warning")
        args = {"step": step} if step is not None else {}
        if self.run_dir is not None and self.supervisor_listening():
            self.send_command("resume", **args)
            return
        if self.run_dir is None:
            self.notify("no run attached", severity="error")
            return
        try:
            self.actions.resume(self.run_dir, **args)
        except Exception as exc:
            self.notify(f"resume failed: {exc}", severity="error")
            return
        self.notify(f"resuming {self.run_dir.name}" + (f" from step {step}" if step is not None else ""))
        self._wake.set()

    # ---- start screen ------------------------------------------------------------------------
    def attach(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.first_paint_at = None
        self._painted.clear()
        if not self._control_given:
            self._control = None
        self.snapshot = None
        self.switch_screen(DashboardScreen())
        self._start_data()

    def resume_run(self, run_dir: Path) -> None:
        try:
            self.actions.resume(Path(run_dir))
        except Exception as exc:
            self.notify(f"resume failed: {exc}", severity="error")
            return
        self.attach(run_dir)

    def check_new_run(self, profile: str, overrides: dict, show) -> None:
        """Run the actions' preflight in a thread; `show(lines)` on the UI thread with its result."""
        checker = getattr(self.actions, "check", None)
        if checker is None:
            show(["preflight: not available here"])
            return

        def work():
            try:
                lines = checker(self.base_dir, profile, overrides)
            except Exception as exc:
                lines = [f"preflight failed: {exc}"]
            self.call_from_thread(show, lines)
        self.run_worker(work, thread=True, group="preflight")

    def start_run(self, profile: str, overrides: dict) -> None:
        try:
            path = self.actions.start(self.base_dir, profile, overrides)
        except Exception as exc:
            self.notify(f"error: {exc}", severity="error")
            return
        self.attach(path)

    # ---- command palette ---------------------------------------------------------------------
    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        if self.run_dir is None:
            return
        yield SystemCommand("Stop the run", "Checkpoint, then stop (asks first)", self.action_stop)
        yield SystemCommand("Retry the stage", "Restart the current stage at the same batch size",
                            lambda: self.send_command("retry"))
        yield SystemCommand("OOM grace: wait for me", "Never fall back automatically",
                            lambda: self.send_command("set_grace", grace="off"))
        yield SystemCommand("OOM grace: 60 s", "Fall back automatically after 60 s",
                            lambda: self.send_command("set_grace", grace=60))
        yield SystemCommand("OOM grace: immediate", "Fall back at once on OOM",
                            lambda: self.send_command("set_grace", grace=0))
        yield SystemCommand("Checkpoints", "List checkpoints, resume, copy a path", self.action_checkpoints)
        yield SystemCommand("Logs", "Full stage logs with filter and search", self.action_logs)
        yield SystemCommand("Chat with the model", "The run's SFT model, streamed (m)", self.action_chat)
        yield SystemCommand("Chart the next training stage", "Cycle the loss chart", self.action_cycle_chart)
        yield SystemCommand("Resume newest checkpoint", "For a stopped or failed run", self.action_resume_latest)


def run_dashboard(run_dir: Path | None, base_dir: Path) -> int:
    """Entry point of `nanotui` / `nanotui attach` / `nanotui demo`: attach to `run_dir` (None = the active run,
    else the start/resume screen). Returns the exit code; detaching leaves the run untouched."""
    if run_dir is None:
        from nanotui.runtime.rundir import find_active_run
        active = find_active_run(base_dir)
        run_dir = active.path if active is not None else None
    app = NanotuiApp(run_dir=run_dir, base_dir=base_dir)
    app.run()
    return app.return_code or 0
