"""Checkpoints of the run's stages: step, time, val bpb, size, validity; resume from one; copy its path (OSC 52)."""
from __future__ import annotations

import time

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

from nanotui.tui.model import CheckpointRow, list_checkpoints

STATUS_STYLE = {"valid": "green", "unverified": "yellow", "invalid": "red"}


class CheckpointsScreen(Screen):
    BINDINGS = [
        Binding("escape,backspace", "app.pop_screen", "Back"),
        Binding("enter,r", "resume", "Resume from selected", priority=True),
        Binding("y", "copy", "Copy path"),
        Binding("question_mark,h,f1", "app.help", "Help"),
    ]

    def __init__(self, base_dir, clock=time.time, run_id: str | None = None):
        super().__init__()
        self.base_dir = base_dir
        self.run_id = run_id
        self.clock = clock
        self.rows: list[CheckpointRow] = []

    def compose(self) -> ComposeResult:
        yield Static("", id="ckpt-title")
        yield DataTable(id="ckpt-table", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        table.add_columns("stage", "step", "saved", "val bpb", "size", "status")
        self.load()

    def load(self) -> None:
        self.rows = list_checkpoints(self.base_dir, self.run_id)
        table = self.query_one(DataTable)
        table.clear()
        for i, r in enumerate(self.rows):
            saved = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(r.time)) if r.time else "–"
            if r.other_run:
                status = Text(f"other run {r.run_id}" if r.run_id else "other run (no run id)", "dim")
            else:
                status = Text(r.status + (f" ({r.reason})" if r.reason else ""), STATUS_STYLE.get(r.status, ""))
            table.add_row(r.stage, f"{r.step:,}", saved, f"{r.val_bpb:.4f}" if r.val_bpb is not None else "–",
                          f"{r.size_bytes / 1024 ** 2:.1f} MiB" if r.size_bytes >= 1024 ** 2 else f"{r.size_bytes / 1024:.1f} KiB",
                          status, key=str(i))
        if self.rows:
            table.move_cursor(row=len(self.rows) - 1)
        self.query_one("#ckpt-title", Static).update(
            f" [b]Checkpoints[/] in {self.base_dir}  ·  {len(self.rows)} found  ·  "
            "Enter/r resume from selected · y copy path · Esc back")

    def selected(self) -> CheckpointRow | None:
        table = self.query_one(DataTable)
        if not self.rows or table.cursor_row is None or not (0 <= table.cursor_row < len(self.rows)):
            return None
        return self.rows[table.cursor_row]

    def action_resume(self) -> None:
        row = self.selected()
        if row is None:
            self.notify("no checkpoint selected", severity="warning")
            return
        if row.other_run:
            self.notify(f"step {row.step} belongs to {'run ' + row.run_id if row.run_id else 'another run'}; "
                        f"this run resumes only from its own checkpoints (resume that run instead)",
                        severity="error")
            return
        if row.status == "invalid":
            self.notify(f"step {row.step} is invalid ({row.reason}); pick another", severity="error")
            return
        self.app.resume_from(row)

    def action_copy(self) -> None:
        row = self.selected()
        if row is None:
            return
        self.app.copy_to_clipboard(row.path)
        self.app.copied = row.path
        self.notify(f"copied {row.path}")
