"""The new-run dialog preselects the profile of the user's config file (through RunActions, the real one too)."""
from __future__ import annotations

import pytest

from nanotui.tui.app import RunActions
from nanotui.tui.screens.start import NewRunScreen

from tui_helpers import FakeActions, app_without_run

pytestmark = pytest.mark.anyio


def test_run_actions_read_the_configured_profile(user_config, monkeypatch):
    assert RunActions().default_profile() is None
    user_config('profile = "4090"\n')
    assert RunActions().default_profile() == "4090"
    monkeypatch.setenv("NANOTUI_PROFILE", "8xh100")
    assert RunActions().default_profile() == "8xh100"
    user_config("profile = 4090\n")          # a bad file: no preselection (starting says what is wrong)
    monkeypatch.delenv("NANOTUI_PROFILE")
    assert RunActions().default_profile() is None


async def test_new_run_dialog_starts_with_the_configured_profile(tmp_path):
    from textual.widgets import Select

    class Actions(FakeActions):
        def default_profile(self):
            return "4090"
    app, actions, run_dir = app_without_run(tmp_path, Actions)
    async with app.run_test(size=(140, 40)) as pilot:
        await pilot.pause()
        await pilot.press("n")
        await pilot.pause()
        assert isinstance(app.screen, NewRunScreen)
        assert app.screen.query_one("#profile", Select).value == "4090"
        await pilot.click("#start")
        await pilot.pause()
    assert actions.calls[0][:2] == ("start", "4090")
