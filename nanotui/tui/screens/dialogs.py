"""Modal dialogs: OOM decision (ladder buttons + countdown), yes/no confirmation, help."""
from __future__ import annotations

from rich.markup import escape
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Static

from nanotui.tui.widgets.panels import fmt_duration


class ConfirmScreen(ModalScreen[bool]):
    """Yes/no; `y` confirms, `n`/Escape cancels."""

    BINDINGS = [Binding("y", "answer(True)", "Yes"), Binding("n,escape", "answer(False)", "No")]

    def __init__(self, question: str, yes_label: str = "Yes"):
        super().__init__()
        self.question = question
        self.yes_label = yes_label

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Static(self.question, classes="dialog-text")
            with Horizontal(classes="buttons"):
                yield Button(f"{self.yes_label} (y)", id="yes", variant="error")
                yield Button("Cancel (n)", id="no")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, value: bool) -> None:
        self.dismiss(value)


class OomScreen(ModalScreen[None]):
    """Shown while the state holds `pending_oom`: one button per ladder rung, retry, stop, countdown."""

    BINDINGS = [Binding("escape,x", "close", "Decide later"), Binding("r", "retry", "Retry"),
                Binding("s", "stop", "Stop run")] + \
               [Binding(str(i), f"rung({i})", show=False) for i in range(1, 10)]

    def __init__(self, pending: dict, last_checkpoint: dict | None, ladder: list[int], clock):
        super().__init__()
        self.pending = pending
        self.last_checkpoint = last_checkpoint
        self.ladder = ladder
        self.clock = clock

    def compose(self) -> ComposeResult:
        p = self.pending
        ck = self.last_checkpoint
        ck_text = f"step {ck.get('step')} ({ck.get('stage')})" if ck else "none (restarts from the stage start)"
        if p.get("note"):  # a script that cannot resume (upstream 2025-11): say plainly what a restart costs
            ck_text = f"[b yellow]{escape(str(p['note']))}[/]"
        with Vertical(classes="dialog", id="oom-dialog"):
            yield Static(f"[b red]Out of memory[/] in [b]{p.get('stage')}[/] at step [b]{p.get('step')}[/] "
                         f"with DEVICE_BS=[b]{p.get('device_bs')}[/]\nlast checkpoint: {ck_text}",
                         classes="dialog-text", id="oom-what")
            yield Static("", id="countdown")
            with Horizontal(classes="buttons"):
                for i, b in enumerate(self.ladder, 1):
                    yield Button(f"{i}: batch {b}", id=f"fallback-{b}", variant="primary" if i == 1 else "default")
                yield Button("r: retry", id="retry")
                yield Button("s: stop", id="stop", variant="error")

    def on_mount(self) -> None:
        self._tick()
        self.set_interval(1.0, self._tick)
        if self.ladder:
            self.query_one(f"#fallback-{self.ladder[0]}", Button).focus()

    def _tick(self) -> None:
        deadline = self.pending.get("deadline")
        label = self.query_one("#countdown", Static)
        if deadline is None:
            label.update("no automatic choice: the run waits for you" +
                         ("; a batch button restarts from step 0" if self.pending.get("note") else ""))
            return
        left = float(deadline) - self.clock()
        auto = f"batch {self.ladder[0]}" if self.ladder else "stop"
        if left > 0:
            label.update(f"automatic choice in [b yellow]{fmt_duration(left)}[/]: {auto}, resume from the last checkpoint")
        else:
            label.update(f"automatic choice due now: {auto}")

    def update_pending(self, pending: dict | None) -> None:
        """The state moved on (someone decided): close the dialog."""
        if not pending or pending.get("step") != self.pending.get("step") or \
                pending.get("stage") != self.pending.get("stage"):
            self.dismiss(None)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        bid = event.button.id or ""
        if bid.startswith("fallback-"):
            self._send("fallback", device_bs=int(bid.split("-", 1)[1]))
        elif bid == "retry":
            self.action_retry()
        elif bid == "stop":
            self.action_stop()

    def _send(self, cmd: str, **args) -> None:
        if self.app.send_command(cmd, **args):
            self.dismiss(None)

    def action_rung(self, i: int) -> None:
        if 1 <= i <= len(self.ladder):
            self._send("fallback", device_bs=self.ladder[i - 1])

    def action_retry(self) -> None:
        self._send("retry")

    def action_stop(self) -> None:
        self._send("stop")

    def action_close(self) -> None:
        self.app.oom_dismissed = (self.pending.get("stage"), self.pending.get("step"))
        self.dismiss(None)


HELP_TEXT = """[b]nanotui keys[/]  (letters and F-keys pass through SSH and tmux)

[b]Dashboard[/]
  d / q      detach: the TUI exits, the run goes on
  s          stop the run (asks for confirmation)
  c          checkpoints: resume from one, copy its path
  l          full stage logs with filter and search
  m          chat with the run's SFT model (once chat_sft has saved a checkpoint)
  o          show the OOM decision dialog (while one is pending)
  t          chart the next training stage
  r          resume the newest checkpoint (stopped or failed run)
  ? h F1     this help          ctrl+p  command palette (grace, retry, …)

[b]OOM dialog[/]      1..9 fall back to that batch size · r retry · s stop · Esc later
[b]Checkpoints[/]     Enter/r resume from the selected · y copy its path (OSC 52) · Esc back
[b]Logs[/]            / or f filter · n/N next/previous match · [ ] previous/next log · F follow · Esc back
[b]Chat[/]            Enter send · Esc stop the reply, then back · ctrl+n new chat
[b]Start screen[/]    Enter attach · r resume newest checkpoint of the selected run · n new run

Press Esc or q to close."""


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,q,question_mark,h,f1", "close", "Close")]

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog", id="help"):
            yield Static(HELP_TEXT, classes="dialog-text")

    def action_close(self) -> None:
        self.dismiss(None)
