"""Shared helpers for the TUI tests: recorded runs, a fake control client, fake run actions, waiting for data."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
sys.path.insert(0, str(FIXTURES))
import make_runs  # noqa: E402

SNAPSHOTS = Path(__file__).resolve().parent / "snapshots"


class FakeControl:
    """Records every command; answers ok (or raises like ControlClient when `alive` is False)."""

    def __init__(self, alive: bool = True):
        self.alive = alive
        self.sent: list[tuple[str, dict]] = []

    def available(self) -> bool:
        return self.alive

    def request(self, cmd: str, **args) -> dict:
        if not self.alive:
            raise ConnectionRefusedError("no supervisor")
        self.sent.append((cmd, args))
        return {"ok": True}


class FakeActions:
    def __init__(self, start_result: Path | None = None):
        self.calls: list[tuple] = []
        self.start_result = start_result

    def start(self, base_dir, profile, overrides):
        self.calls.append(("start", profile, overrides))
        return self.start_result

    def check(self, base_dir, profile, overrides):
        self.calls.append(("check", profile, overrides))
        return ["refused: cuda: a line from the fake preflight", "preflight: refused (0.0 s; nothing started)"]

    def resume(self, run_dir, step=None, device_bs=None):
        self.calls.append(("resume", Path(run_dir).name, step))


def recorded(name: str, tmp_path: Path) -> tuple[Path, Path, float]:
    """Install a recorded scenario; returns (base_dir, run_dir, a fixed 'now' just after its last update)."""
    base = tmp_path / name
    run_dir = make_runs.install(name, base)
    updated = json.loads((run_dir / "state.json").read_text())["updated"]
    return base, run_dir, float(updated) + 20.0


async def wait_history(pilot, app, timeout: float = 10.0) -> None:
    """Until the worker has delivered the whole-run history."""
    waited = 0.0
    while not (app.snapshot and app.snapshot.history_loaded):
        await pilot.pause(0.05)
        waited += 0.05
        assert waited < timeout, "history never loaded"
    await pilot.pause()


def normalise_svg(svg: str, base: Path) -> str:
    """Remove what changes between runs: temp paths and Textual's random terminal ids."""
    svg = svg.replace(str(base), "BASE")
    text = str(base)
    for cut in range(len(text) - 1, 4, -1):  # a path the log panel cut short ("/tmp/pytest-of-…/test_x…")
        if text[:cut] + "…" in svg:
            svg = svg.replace(text[:cut] + "…", "BASE…")
    svg = re.sub(r"BASE[^<…\s]*…", "BASE…", svg)  # how much of the path fits depends on the temp dir's length
    svg = re.sub(r"terminal-\d+", "terminal", svg)
    return svg


def app_without_run(tmp_path: Path, actions_cls=None):
    """The dashboard over the recorded `finished` scenario with no run attached (where `n` opens the new-run
    dialog); returns (app, actions, run_dir). actions_cls: a FakeActions subclass (default FakeActions)."""
    from nanotui.tui.app import NanotuiApp
    base, run_dir, now = recorded("finished", tmp_path)
    actions = (actions_cls or FakeActions)(start_result=run_dir)
    app = NanotuiApp(run_dir=None, base_dir=base, control=FakeControl(), actions=actions, clock=lambda: now,
                     poll_interval=None, theme="textual-dark")
    return app, actions, run_dir
