"""Braille line chart with labelled axes: train loss (min/max envelope per column), val points on a right axis, markers."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

from rich.text import Text
from textual.widget import Widget

BRAILLE_BASE = 0x2800
# dot bit for (sub-column 0..1, sub-row 0..3) inside one braille cell
DOT_BITS = ((0x01, 0x02, 0x04, 0x40), (0x08, 0x10, 0x20, 0x80))

MARKER_GLYPHS = {"checkpoint": ("┴", "green"), "oom": ("✗", "bold red"), "restart": ("↻", "yellow"),
                 "batch": ("b", "cyan")}
MARKER_LINES = {"oom": "red", "restart": "yellow", "batch": "cyan"}


@dataclass(frozen=True)
class ChartData:
    """What the chart draws; x is the training step. `line` points are (x, ymin, ymax) buckets."""
    title: str = "loss"
    line: tuple[tuple[float, float, float], ...] = ()
    points: tuple[tuple[float, float], ...] = ()
    markers: tuple[tuple[float, str], ...] = ()
    x_max: float | None = None  # the stage's total steps, so the axis shows how far along we are
    line_label: str = "train loss"
    points_label: str = "val bpb"


def human(v: float) -> str:
    """Compact axis number: 0, 950, 4k, 12.5k, 1.2M; small values with 3 significant digits."""
    a = abs(v)
    if a >= 1e6:
        return f"{v / 1e6:.3g}M"
    if a >= 1e4:
        return f"{v / 1e3:.0f}k"
    if a >= 1e3:
        return f"{v / 1e3:.3g}k"
    if a == 0 or a >= 100:
        return f"{v:.0f}"
    return f"{v:.3g}"


def _nice_range(lo: float, hi: float) -> tuple[float, float]:
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return 0.0, 1.0
    if hi - lo < 1e-9:
        pad = abs(hi) * 0.05 or 0.5
        return lo - pad, hi + pad
    pad = (hi - lo) * 0.04
    return lo - pad, hi + pad


class _Canvas:
    """A grid of braille cells; each dot remembers the style of the last series that set it."""

    def __init__(self, cols: int, rows: int):
        self.cols, self.rows = cols, rows
        self.bits = [[0] * cols for _ in range(rows)]
        self.style: list[list[str | None]] = [[None] * cols for _ in range(rows)]

    def dot(self, px: int, py: int, style: str) -> None:
        """px in [0, 2*cols), py in [0, 4*rows) with 0 at the top."""
        if 0 <= px < self.cols * 2 and 0 <= py < self.rows * 4:
            c, r = px >> 1, py >> 2
            self.bits[r][c] |= DOT_BITS[px & 1][py & 3]
            self.style[r][c] = style

    def vline(self, px: int, y0: int, y1: int, style: str) -> None:
        if y0 > y1:
            y0, y1 = y1, y0
        for py in range(y0, y1 + 1):
            self.dot(px, py, style)

    def row_text(self, r: int) -> Text:
        """One row, with runs of equally styled cells appended as one span (cheap to build and render)."""
        t = Text()
        bits, styles = self.bits[r], self.style[r]
        run: list[str] = []
        run_style = styles[0] or ""
        for c in range(self.cols):
            style = styles[c] or ""
            if style != run_style:
                t.append("".join(run), run_style)
                run, run_style = [], style
            b = bits[c]
            run.append(chr(BRAILLE_BASE + b) if b else " ")
        t.append("".join(run), run_style)
        return t


def downsample(line: Sequence[tuple[float, float, float]], x0: float, x1: float,
               columns: int) -> list[tuple[float, float] | None]:
    """Min/max per pixel column over [x0, x1]: the envelope keeps spikes visible at any width."""
    out: list[list[float] | None] = [None] * columns
    span = (x1 - x0) or 1.0
    for x, lo, hi in line:
        i = int((x - x0) / span * (columns - 1) + 0.5)
        if 0 <= i < columns:
            cell = out[i]
            if cell is None:
                out[i] = [lo, hi]
            else:
                cell[0] = min(cell[0], lo)
                cell[1] = max(cell[1], hi)
    return [tuple(c) if c else None for c in out]  # type: ignore[misc]


def render_chart(data: ChartData, width: int, height: int, *, line_style: str = "bright_blue",
                 point_style: str = "magenta", axis_style: str = "dim") -> list[Text]:
    """Lines of text (legend, plot rows, x-axis, x labels) exactly `width` cells wide, `height` rows."""
    legend = Text(" ")
    legend.append(f"━ {data.line_label}", line_style)
    if data.points:
        legend.append(f"  ● {data.points_label}", point_style)
    for kind in ("checkpoint", "oom", "restart", "batch"):
        if any(k == kind for _, k in data.markers):
            glyph, style = MARKER_GLYPHS[kind]
            legend.append(f"  {glyph} {'ckpt' if kind == 'checkpoint' else kind}", style)
    legend.truncate(width)
    rows = max(1, height - 3)
    lines = [legend]
    if not data.line and not data.points:
        for i in range(rows):
            lines.append(Text(" waiting for the first step…" if i == rows // 2 else "", "dim"))
        lines += [Text(""), Text("")]
        return [ln.copy() if ln.cell_len <= width else ln[:width] for ln in lines]

    ys = [v for _, lo, hi in data.line for v in (lo, hi)]
    y0, y1 = _nice_range(min(ys), max(ys)) if ys else (0.0, 1.0)
    pys = [y for _, y in data.points]
    q0, q1 = _nice_range(min(pys), max(pys)) if pys else (0.0, 1.0)
    xs = [x for x, _, _ in data.line] + [x for x, _ in data.points] + [x for x, _ in data.markers]
    x0 = 0.0
    x1 = max(max(xs) if xs else 1.0, data.x_max or 0.0, 1.0)

    left = max(len(human(v)) for v in (y0, y1, (y0 + y1) / 2)) + 1
    right = (max(len(human(v)) for v in (q0, q1, (q0 + q1) / 2)) + 1) if pys else 0
    cols = max(4, width - left - right - 1 - (1 if right else 0))
    canvas = _Canvas(cols, rows)
    px_w, py_h = cols * 2, rows * 4

    def ypix(v: float, lo: float, hi: float) -> int:
        return int(round((hi - v) / (hi - lo) * (py_h - 1)))

    def xpix(x: float) -> int:
        return int(round((x - x0) / (x1 - x0) * (px_w - 1)))

    for x, kind in data.markers:
        if kind in MARKER_LINES:
            px = xpix(x)
            for py in range(0, py_h, 2):
                canvas.dot(px, py, MARKER_LINES[kind])
    prev: tuple[int, int] | None = None
    for px, cell in enumerate(downsample(data.line, x0, x1, px_w)):
        if cell is None:
            continue
        top, bot = ypix(cell[1], y0, y1), ypix(cell[0], y0, y1)
        if prev is not None and px - prev[0] <= 2:  # join to the previous column so the line stays continuous
            top, bot = min(top, prev[1]), max(bot, prev[1]) if prev[1] > bot else bot
            mid = (ypix(cell[0], y0, y1) + ypix(cell[1], y0, y1)) // 2
            canvas.vline(px, min(top, prev[1]), max(bot, prev[1]), line_style)
            prev = (px, mid)
        else:
            canvas.vline(px, top, bot, line_style)
            prev = (px, (top + bot) // 2)
    for x, y in data.points:
        px, py = xpix(x), ypix(y, q0, q1)
        for dx, dy in ((0, 0), (1, 0), (0, 1), (1, 1)):
            canvas.dot(px + dx, py + dy, point_style)

    label_rows = {0: y1, rows - 1: y0, (rows - 1) // 2: (y0 + y1) / 2} if rows >= 3 else {0: y1, rows - 1: y0}
    plabel_rows = {0: q1, rows - 1: q0, (rows - 1) // 2: (q0 + q1) / 2} if rows >= 3 else {0: q1, rows - 1: q0}
    for r in range(rows):
        t = Text(human(label_rows[r]).rjust(left - 1) + " " if r in label_rows else " " * left, line_style)
        t.append("│", axis_style)
        t.append_text(canvas.row_text(r))
        if right:
            t.append("│", axis_style)
            t.append(human(plabel_rows[r]).ljust(right - 1) if r in plabel_rows else " " * (right - 1), point_style)
        lines.append(t)

    axis = Text(" " * left, axis_style)
    axis_chars = ["─"] * cols
    axis_styles: list[str] = [axis_style] * cols
    for x, kind in sorted(data.markers, key=lambda m: ("checkpoint", "batch", "restart", "oom").index(m[1])
                          if m[1] in MARKER_GLYPHS else 0):
        if kind in MARKER_GLYPHS:
            c = min(cols - 1, xpix(x) // 2)
            axis_chars[c], axis_styles[c] = MARKER_GLYPHS[kind]
    axis.append("└", axis_style)
    for ch, st in zip(axis_chars, axis_styles):
        axis.append(ch, st)
    if right:
        axis.append("┘", axis_style)
    lines.append(axis)

    labels = [" "] * (cols + 1)
    n_ticks = max(2, min(6, cols // 10))
    for i in range(n_ticks):
        xv = x0 + (x1 - x0) * i / (n_ticks - 1)
        s = human(xv)
        c = min(cols - len(s), max(0, int(round(i / (n_ticks - 1) * (cols - 1))) - (len(s) // 2 if i else 0)))
        if all(ch == " " for ch in labels[max(0, c - 1): c + len(s) + 1]):
            labels[c: c + len(s)] = list(s)
    xl = Text(" " * left + " " + "".join(labels[:cols]), axis_style)
    if right:
        xl.append(" step".ljust(right + 1)[: right + 1], axis_style)
    lines.append(xl)
    return [ln if ln.cell_len <= width else ln[:width] for ln in lines]


class LossChart(Widget):
    """Widget around render_chart: re-renders at its own size whenever `data` changes."""

    DEFAULT_CSS = "LossChart { height: 1fr; min-height: 8; }"

    def __init__(self, *, id: str | None = None):
        super().__init__(id=id)
        self.data = ChartData()

    def set_data(self, data: ChartData) -> None:
        if data != self.data:
            self.data = data
            self.refresh()

    def render(self) -> Text:
        w, h = self.content_size.width, self.content_size.height
        if w < 10 or h < 4:
            return Text("")
        out = Text("\n").join(render_chart(self.data, w, h))
        out.no_wrap = True
        out.overflow = "crop"
        return out
