"""SVG snapshots of the dashboard from recorded runs at fixed sizes (UPDATE_SNAPSHOTS=1 rewrites them)."""
from __future__ import annotations

import os

import pytest

from nanotui.tui.app import NanotuiApp

from tui_helpers import SNAPSHOTS, FakeControl, normalise_svg, recorded, wait_history

pytestmark = pytest.mark.anyio
CASES = [("mid_training", (160, 48)), ("oom_pending", (120, 40)), ("finished", (80, 24)), ("diverged", (120, 40))]


@pytest.mark.parametrize("name,size", CASES)
async def test_snapshot(tmp_path, name, size):
    base, run_dir, now = recorded(name, tmp_path)
    app = NanotuiApp(run_dir=run_dir, base_dir=base, control=FakeControl(), clock=lambda: now, poll_interval=None,
                     theme="textual-dark")
    async with app.run_test(size=size) as pilot:
        await wait_history(pilot, app)
        await pilot.pause(0.1)
        svg = normalise_svg(app.export_screenshot(title="nanotui"), base)
    path = SNAPSHOTS / f"{name}-{size[0]}x{size[1]}.svg"
    if os.environ.get("UPDATE_SNAPSHOTS") == "1" or not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(svg)
        if os.environ.get("UPDATE_SNAPSHOTS") != "1":
            pytest.skip(f"wrote new snapshot {path.name}")
    assert svg == path.read_text(), f"{path.name} changed; inspect it and rerun with UPDATE_SNAPSHOTS=1"
