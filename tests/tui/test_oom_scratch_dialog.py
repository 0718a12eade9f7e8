"""The OOM dialog for a script that cannot resume (upstream 2025-11): it says a restart begins at step 0."""
import json

import pytest
from test_app import make_app, screen_text  # noqa: E402 (tests/tui is on sys.path)
from tui_helpers import FakeControl, wait_history

from nanotui.tui.screens.dialogs import OomScreen

pytestmark = pytest.mark.anyio


async def test_dialog_says_progress_is_lost_and_never_counts_down(tmp_path):
    control = FakeControl()
    app, _, run_dir = make_app(tmp_path, "oom_pending", control=control)
    state_path = run_dir / "state.json"
    st = json.loads(state_path.read_text())
    st["pending_oom"].update(deadline=None, note="base_train (upstream nanochat 2025-11) cannot resume: a restart "
                                                 "begins again at step 0 and the 92 steps done so far are lost")
    state_path.write_text(json.dumps(st))
    async with app.run_test(size=(140, 40)) as pilot:
        await wait_history(pilot, app)
        assert isinstance(app.screen, OomScreen)
        text = screen_text(app)
        assert "cannot resume" in text and "92 steps done so far are lost" in text
        assert "automatic choice in" not in text and "restarts from step 0" in text
        await pilot.click("#fallback-4")
        await pilot.pause()
        assert control.sent == [("fallback", {"device_bs": 4})]
