"""Readability at small sizes: the header, stage list and chart legend keep what matters when space runs out."""
from __future__ import annotations

import pytest

from nanotui.tui.app import NanotuiApp
from nanotui.tui.widgets.chart import ChartData, axis_labels, render_chart
from nanotui.tui.widgets.panels import stage_window

from tui_helpers import FakeControl, recorded, wait_history

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.parametrize("n,current,height,expected", [
    (9, 2, 20, (0, 9)),    # everything fits
    (9, 0, 4, (0, 3)),     # top: 3 rows + "… 6 more"
    (9, 2, 4, (1, 3)),     # "… 1 earlier", the previous stage, the current one, "… 6 more"
    (9, 8, 4, (6, 9)),     # bottom: "… 6 earlier" + the last three
    (9, 5, 2, (5, 7)),     # tiny: the current stage first
])
def test_stage_window_keeps_the_current_stage_in_view(anyio_backend, n, current, height, expected):
    start, end = stage_window(n, current, height)
    assert (start, end) == expected
    assert start <= current < end
    hints = ((start > 0) + (end < n)) if height >= 3 else 0
    assert (end - start) + hints <= max(height, 1)


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
def test_narrow_chart_uses_a_short_legend_and_more_y_labels_when_tall(anyio_backend):
    data = ChartData(title="base_train", line=tuple((x, 5.0 - x / 100, 5.0 - x / 100) for x in range(200)),
                     points=((0, 4.1), (100, 3.6)), markers=((50, "restart"), (62, "oom"), (75, "checkpoint"),
                                                          (50, "batch")), x_max=400)
    narrow = render_chart(data, 44, 14)
    assert all(line.cell_len <= 44 for line in narrow) and len(narrow) == 14
    assert "rst" in narrow[0].plain and "bs" in narrow[0].plain, narrow[0].plain
    wide = render_chart(data, 150, 40)
    assert "restart" in wide[0].plain and "batch" in wide[0].plain
    assert len(axis_labels(0.0, 1.0, 37)) > len(axis_labels(0.0, 1.0, 11)) >= 3
    plot_rows = [ln.plain for ln in wide[1:-2]]
    assert sum(1 for row in plot_rows if row[:5].strip()) == len(axis_labels(0.0, 1.0, 37))


async def test_80x24_header_and_stage_list_keep_the_essentials(tmp_path):
    base, run_dir, now = recorded("mid_training", tmp_path)
    app = NanotuiApp(run_dir=run_dir, base_dir=base, control=FakeControl(), clock=lambda: now, poll_interval=None,
                     theme="textual-dark")
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_history(pilot, app)
        header = str(app.screen.query_one("#header").render())
        assert len(header) <= 80
        for needle in ("RUNNING", "base_train", "a2", "BS 4", "SEQ 256", "W&B dummy"):
            assert needle in header, (needle, header)
        rows = app.screen.query_one("#stages").rows(app.snapshot)
        names = [name for _, _, name, _, _, _ in rows]
        assert len(rows) <= app.screen.query_one("#stages").content_size.height
        assert "base_train a2" in names and names[-1].endswith("more"), names
        assert "training · base_train" in app.screen.query_one("#metrics").border_title
