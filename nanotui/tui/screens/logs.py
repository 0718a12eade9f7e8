"""Full stage logs: pick an attempt's log, filter lines, search matches, follow the tail."""
from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Footer, Input, RichLog, Static

from nanotui.tui.model import LogFollower, run_logs

SHOWN_MAX = 5000  # lines rendered at once; the filter searches everything kept (LogFollower.max_lines)


class LogsScreen(Screen):
    BINDINGS = [
        Binding("escape", "back", "Back"),
        Binding("slash,f", "focus_filter", "Filter"),
        Binding("n", "next_match", "Next match"),
        Binding("N", "prev_match", "Prev match", show=False),
        Binding("left_square_bracket", "prev_log", "Prev log"),
        Binding("right_square_bracket", "next_log", "Next log"),
        Binding("F", "toggle_follow", "Follow"),
        Binding("question_mark,h,f1", "app.help", "Help", show=False),
    ]

    def __init__(self, run_dir: Path, poll_interval: float | None = 1.0):
        super().__init__()
        self.run_dir = Path(run_dir)
        self.poll_interval = poll_interval
        self.logs: list[Path] = []
        self.index = -1
        self.follower: LogFollower | None = None
        self.filter = ""
        self.follow = True
        self.shown: list[str] = []
        self.match_rows: list[int] = []
        self.match_pos = -1

    def compose(self) -> ComposeResult:
        yield Static("", id="logs-title")
        yield Input(placeholder="filter (Enter to apply, Esc to leave)", id="log-filter")
        yield RichLog(id="log-view", max_lines=SHOWN_MAX, wrap=False, highlight=False, markup=False)
        yield Footer()

    def on_mount(self) -> None:
        self.logs = run_logs(self.run_dir)
        self.open_log(len(self.logs) - 1)
        if self.poll_interval:
            self.set_interval(self.poll_interval, self.poll)
        self.query_one(RichLog).focus()

    def open_log(self, index: int) -> None:
        if not self.logs:
            self.query_one("#logs-title", Static).update(" [b]Logs[/]: this run has no stage logs yet")
            return
        self.index = max(0, min(index, len(self.logs) - 1))
        if self.follower:
            self.follower.close()
        self.follower = LogFollower(self.logs[self.index])
        self.show_lines()

    def _title(self) -> None:
        name = self.logs[self.index].name if self.logs else "–"
        parts = [f" [b]Logs[/] {name} ({self.index + 1}/{len(self.logs)})"]
        if self.filter:
            parts.append(f"filter '{self.filter}': {len(self.shown)} lines, {len(self.match_rows)} matches")
        parts.append("following" if self.follow else "paused")
        self.query_one("#logs-title", Static).update("  ·  ".join(parts))

    def _styled(self, line: str) -> Text:
        t = Text(line)
        if self.filter:
            t.highlight_words([self.filter], "black on yellow", case_sensitive=False)
        elif "Error" in line or "OOM" in line:
            t.stylize("red")
        return t

    def show_lines(self) -> None:
        view = self.query_one(RichLog)
        view.clear()
        lines = list(self.follower.lines) if self.follower else []
        needle = self.filter.lower()
        self.shown = [s for s in lines if needle in s.lower()] if needle else lines
        self.shown = self.shown[-SHOWN_MAX:]
        self.match_rows = list(range(len(self.shown))) if needle else []
        self.match_pos = len(self.match_rows) - 1
        for s in self.shown:
            view.write(self._styled(s))
        if self.follow:
            view.scroll_end(animate=False)
        self._title()

    def poll(self) -> None:
        if not self.follower:
            self.logs = run_logs(self.run_dir)
            if self.logs:
                self.open_log(len(self.logs) - 1)
            return
        new = self.follower.poll()
        logs = run_logs(self.run_dir)
        if len(logs) != len(self.logs):
            on_last = self.index == len(self.logs) - 1
            self.logs = logs
            if on_last and self.follow:
                self.open_log(len(logs) - 1)
                return
        if not new:
            return
        needle = self.filter.lower()
        view = self.query_one(RichLog)
        for s in new:
            if not needle or needle in s.lower():
                self.shown.append(s)
                if needle:
                    self.match_rows.append(len(self.shown) - 1)
                view.write(self._styled(s), scroll_end=self.follow)
        self._title()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.filter = event.value.strip()
        self.show_lines()
        self.query_one(RichLog).focus()

    def action_focus_filter(self) -> None:
        self.query_one("#log-filter", Input).focus()

    def action_back(self) -> None:
        if self.focused is self.query_one("#log-filter", Input):
            self.query_one(RichLog).focus()
            return
        if self.follower:
            self.follower.close()
        self.app.pop_screen()

    def _goto_match(self, delta: int) -> None:
        if not self.match_rows:
            self.notify("no matches (set a filter with /)", severity="warning")
            return
        self.match_pos = (self.match_pos + delta) % len(self.match_rows)
        self.follow = False
        view = self.query_one(RichLog)
        view.scroll_to(y=self.match_rows[self.match_pos], animate=False)
        self._title()

    def action_next_match(self) -> None:
        self._goto_match(1)

    def action_prev_match(self) -> None:
        self._goto_match(-1)

    def action_prev_log(self) -> None:
        if self.index > 0:
            self.open_log(self.index - 1)

    def action_next_log(self) -> None:
        if self.index < len(self.logs) - 1:
            self.open_log(self.index + 1)

    def action_toggle_follow(self) -> None:
        self.follow = not self.follow
        if self.follow:
            self.query_one(RichLog).scroll_end(animate=False)
        self._title()
