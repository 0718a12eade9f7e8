"""Start/resume screen (no run active): recent runs with state and newest checkpoint; resume; start a new run."""
from __future__ import annotations

import time
from pathlib import Path

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen, Screen
from textual.widgets import Button, DataTable, Footer, Input, Select, Static

from nanotui.tui.model import RunSummary, recent_runs

PROFILES = ("cpu-demo", "4090", "8xh100")


def parse_overrides(text: str) -> dict[str, str]:
    """`DEVICE_BS=4 SEQ_LEN=1024` -> {"DEVICE_BS": "4", ...}; raises ValueError naming a bad item."""
    out = {}
    for item in text.replace(",", " ").split():
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise ValueError(f"override '{item}' is not KEY=VALUE (e.g. DEVICE_BS=4)")
        out[key.strip().upper()] = value.strip()
    return out


class NewRunScreen(ModalScreen[tuple[str, dict] | None]):
    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog", id="new-run"):
            yield Static("[b]Start a new run[/]", classes="dialog-text")
            yield Select([(p, p) for p in PROFILES], value=PROFILES[0], allow_blank=False, id="profile")
            yield Input(placeholder="overrides, e.g. DEVICE_BS=4 SEQ_LEN=1024 WANDB_RUN=d20", id="overrides")
            yield Static("", id="new-run-error")
            with Horizontal(classes="buttons"):
                yield Button("Start", id="start", variant="primary")
                yield Button("Cancel", id="cancel")

    def _submit(self) -> None:
        try:
            overrides = parse_overrides(self.query_one("#overrides", Input).value)
        except ValueError as exc:
            self.query_one("#new-run-error", Static).update(f"[red]error: {exc}[/]")
            return
        self.dismiss((str(self.query_one("#profile", Select).value), overrides))

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self._submit()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "start":
            self._submit()
        else:
            self.dismiss(None)

    def action_cancel(self) -> None:
        self.dismiss(None)


class StartScreen(Screen):
    BINDINGS = [
        Binding("enter", "attach", "Attach", priority=True),
        Binding("r", "resume", "Resume newest ckpt"),
        Binding("n", "new_run", "New run"),
        Binding("d,q", "app.quit", "Quit"),
        Binding("question_mark,h,f1", "app.help", "Help"),
    ]

    def __init__(self, base_dir: Path):
        super().__init__()
        self.base_dir = Path(base_dir)
        self.runs: list[RunSummary] = []

    def compose(self) -> ComposeResult:
        yield Static("", id="start-title")
        yield DataTable(id="runs-table", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(DataTable).add_columns("run", "profile", "state", "stage", "step", "newest checkpoint",
                                              "updated")
        self.load()

    def load(self) -> None:
        self.runs = recent_runs(self.base_dir)
        table = self.query_one(DataTable)
        table.clear()
        for i, r in enumerate(self.runs):
            ck = r.newest_checkpoint
            table.add_row(r.run_id, r.profile or "?", r.state, r.stage or "–", "–" if r.step is None else f"{r.step:,}",
                          f"{ck.get('stage')} step {ck.get('step')}" if ck else "–",
                          time.strftime("%Y-%m-%d %H:%M", time.gmtime(r.updated)) if r.updated else "–", key=str(i))
        msg = (f" [b]No active run[/] in {self.base_dir}.  Enter attach/replay · r resume newest checkpoint · "
               f"n new run · q quit") if self.runs else \
            (f" [b]No runs yet[/] in {self.base_dir}.  Press [b]n[/] to start one "
             "(cpu-demo runs offline in minutes).")
        self.query_one("#start-title", Static).update(msg)

    def selected(self) -> RunSummary | None:
        table = self.query_one(DataTable)
        row = table.cursor_row
        return self.runs[row] if self.runs and row is not None and 0 <= row < len(self.runs) else None

    def action_attach(self) -> None:
        r = self.selected()
        if r is not None:
            self.app.attach(r.path)

    def action_resume(self) -> None:
        r = self.selected()
        if r is None:
            self.notify("no run to resume: press n to start one", severity="warning")
            return
        self.app.resume_run(r.path)

    def action_new_run(self) -> None:
        def done(result) -> None:
            if result:
                self.app.start_run(*result)
        self.app.push_screen(NewRunScreen(), done)
