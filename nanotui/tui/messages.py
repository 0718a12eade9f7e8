"""Messages the data worker posts to the app (snapshots) and screens post to the app (actions)."""
from __future__ import annotations

from textual.message import Message

from nanotui.tui.coreapi import Notice
from nanotui.tui.model import RunSnapshot


class SnapshotUpdated(Message):
    """A fresh immutable picture of the run (from the data worker thread)."""

    def __init__(self, snapshot: RunSnapshot) -> None:
        super().__init__()
        self.snapshot = snapshot


class RunSelected(Message):
    """The start screen chose a run to attach to."""

    def __init__(self, run_dir) -> None:
        super().__init__()
        self.run_dir = run_dir


class RunNotice(Message):
    """An important new event of the run (OOM, fallback, stage done, crash, ...) to announce (worker thread)."""

    def __init__(self, notice: Notice) -> None:
        super().__init__()
        self.notice = notice
