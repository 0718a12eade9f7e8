"""The start screen's dry run: the new-run dialog's "Check (dry run)" button shows the preflight's lines (the same
check `nanotui start --dry-run` runs) and starts nothing; RunActions.check runs the real preflight."""
from __future__ import annotations

import pytest

from nanotui.tui.app import RunActions
from nanotui.tui.screens.start import NewRunScreen

from tui_helpers import app_without_run

pytestmark = pytest.mark.anyio


async def test_check_button_shows_the_preflight_and_starts_nothing(tmp_path):
    app, actions, run_dir = app_without_run(tmp_path)
    async with app.run_test(size=(140, 40)) as pilot:
        await pilot.pause()
        await pilot.press("n")
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, NewRunScreen)
        await pilot.click("#check")
        for _ in range(50):
            await pilot.pause(0.05)
            if "fake preflight" in str(screen.query_one("#preflight").render()):
                break
        text = str(screen.query_one("#preflight").render())
        assert "refused: cuda: a line from the fake preflight" in text and "nothing started" in text
        assert isinstance(app.screen, NewRunScreen)          # still choosing: nothing started
    assert actions.calls == [("check", "cpu-demo", {})]


def test_run_actions_check_is_the_real_preflight(tmp_path):
    base = tmp_path / "base"
    lines = RunActions().check(base, "cpu-demo", {"SFT_BS": "3"})
    assert any(line.startswith("refused: flags: chat_sft: --device_batch_size=3") for line in lines), lines
    assert lines[-1].startswith("preflight: refused")
    assert not base.exists()   # the preflight writes nothing
