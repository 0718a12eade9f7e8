"""Braille line chart with labelled axes: train loss (min/max envelope per column), val points on a right axis, markers."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Sequence

from rich.text import Text
from textual.widget import Widget

BRAILLE_BASE = 0x2800
# dot bit for (sub-column 0..1, sub-row 0..3) inside one braille cell
DOT_BITS = ((0x01, 0x02, 0x04, 0x40), (0x08, 0x10, 0x20, 0x80))

MARKER_GLYPHS = {"checkpoint": ("┴", "green"), "oom": ("✗", "bold red"), "restart": ("↻", "yellow"),
                 "batch": ("b", "cyan"), "divergence": ("!", "bold magenta"), "rollback": ("↶", "magenta")}
MARKER_LINES = {"oom": "red", "restart": "yellow", "batch": "cyan", "divergence": "magenta", "rollback": "magenta"}
MARKER_ORDER = ("checkpoint", "batch", "restart", "rollback", "oom", "divergence")  # later ones win a shared cell


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


def axis_labels(lo: float, hi: float, rows: int) -> dict[int, float]:
    """Value labels for a y axis of `rows` rows: top and bottom always, one about every 6 rows between."""
    if rows < 3:
        return {0: hi, rows - 1: lo}
    n = max(3, min(9, (rows - 1) // 6 + 1))
    out = {}
    for i in range(n):
        r = round(i * (rows - 1) / (n - 1))
        out[r] = hi - (hi - lo) * r / (rows - 1)
    return out


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

    def segment(self, xa: int, ya: int, xb: int, yb: int, style: str) -> None:
        """A straight line of dots from (xa, ya) to (xb, yb), one dot per step along the longer axis."""
        n = max(abs(xb - xa), abs(yb - ya), 1)
        for i in range(n + 1):
            self.dot(xa + round((xb - xa) * i / n), ya + round((yb - ya) * i / n), style)

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


SHORT_NAMES = {"checkpoint": "ckpt", "restart": "rst", "batch": "bs", "divergence": "div", "rollback": "rb"}


def chart_legend(data: ChartData, line_style: str, point_style: str, short: bool = False) -> Text:
    """The legend line: series and the marker kinds present (`short`: terse names for narrow charts)."""
    sep = " " if short else "  "
    legend = Text(" ")
    legend.append(f"━ {data.line_label.split()[-1] if short else data.line_label}", line_style)
    if data.points:
        legend.append(f"{sep}● {data.points_label}", point_style)
    for kind in ("checkpoint", "oom", "restart", "batch", "divergence", "rollback"):
        if any(k == kind for _, k in data.markers):
            glyph, style = MARKER_GLYPHS[kind]
            name = SHORT_NAMES.get(kind, kind) if short else ("ckpt" if kind == "checkpoint" else kind)
            legend.append(f"{sep}{glyph} {name}", style)
    return legend


def render_chart(data: ChartData, width: int, height: int, *, line_style: str = "bright_blue",
                 point_style: str = "magenta", axis_style: str = "dim") -> list[Text]:
    """Lines of text (legend, plot rows, x-axis, x labels) exactly `width` cells wide, `height` rows."""
    legend = chart_legend(data, line_style, point_style)
    if legend.cell_len > width:
        legend = chart_legend(data, line_style, point_style, short=True)
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

    label_rows = axis_labels(y0, y1, rows)
    plabel_rows = axis_labels(q0, q1, rows)
    left = max(len(human(v)) for v in label_rows.values()) + 1
    right = (max(len(human(v)) for v in plabel_rows.values()) + 1) if pys else 0
    cols = max(4, width - left - right - 1 - (1 if right else 0))
    canvas = _Canvas(cols, rows)
    px_w, py_h = cols * 2, rows * 4

    def ypix(v: float, lo: float, hi: float) -> int:
        return int(round((hi - v) / (hi - lo) * (py_h - 1)))

    def xpix(x: float) -> int:
        return int(round((x - x0) / (x1 - x0) * (px_w - 1)))

    for x, kind in sorted(data.markers, key=lambda m: m[1] in ("rollback", "divergence")):  # drawn last: they win
        if kind in MARKER_LINES:
            px = xpix(x)
            for py in range(0, py_h, 2):
                canvas.dot(px, py, MARKER_LINES[kind])
    prev: tuple[int, int] | None = None
    for px, cell in enumerate(downsample(data.line, x0, x1, px_w)):
        if cell is None:
            continue
        top, bot = ypix(cell[1], y0, y1), ypix(cell[0], y0, y1)
        canvas.vline(px, top, bot, line_style)  # the min/max envelope of this pixel column
        if prev is not None:  # join to the previous column across any gap, so the line stays continuous
            canvas.segment(prev[0], prev[1], px, (top + bot) // 2, line_style)
        prev = (px, (top + bot) // 2)
    for x, y in data.points:  # each val point a 2x2 dot on its own (right) axis
        px, py = xpix(x), ypix(y, q0, q1)
        for dx, dy in ((0, 0), (1, 0), (0, 1), (1, 1)):
            canvas.dot(px + dx, py + dy, point_style)

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
    for x, kind in sorted(data.markers, key=lambda m: MARKER_ORDER.index(m[1]) if m[1] in MARKER_GLYPHS else 0):
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


def same_series(old: ChartData, new: ChartData) -> bool:
    """True when `new` only extends `old`'s line (live steps arriving): such changes may wait for a throttled redraw;
    anything else (history loaded, another stage, new val point or marker) is drawn at once."""
    return (old.title == new.title and old.x_max == new.x_max and old.points == new.points
            and old.markers == new.markers and bool(old.line) and old.line[:1] == new.line[:1])


class LossChart(Widget):
    """Widget around render_chart. A new picture is drawn when `data` changes: at once for a new series, at most
    every `min_interval` seconds while live steps extend the line (the whole-run chart moves a pixel at a time)."""

    DEFAULT_CSS = "LossChart { height: 1fr; min-height: 8; }"

    def __init__(self, *, id: str | None = None, min_interval: float = 2.0):
        super().__init__(id=id)
        self.data = ChartData()
        self.min_interval = min_interval
        self.renders = 0  # how many pictures were drawn (tests and the benchmark read it)
        self._drawn_at = float("-inf")
        self._timer = None

    def set_data(self, data: ChartData) -> None:
        if data == self.data:
            return
        old, self.data = self.data, data
        if self._timer is not None:
            if same_series(old, data):
                return  # the pending redraw will pick up the newest data
            self._timer.stop()
            self._timer = None
        wait = self._drawn_at + self.min_interval - time.monotonic()
        if wait > 0 and same_series(old, data):
            self._timer = self.set_timer(wait, self._redraw, name="chart-redraw")
        else:
            self.refresh()

    def _redraw(self) -> None:
        self._timer = None
        self.refresh()

    def render(self) -> Text:
        self._drawn_at = time.monotonic()
        self.renders += 1
        w, h = self.content_size.width, self.content_size.height
        if w < 10 or h < 4:
            return Text("")
        out = Text("\n").join(render_chart(self.data, w, h))
        out.no_wrap = True
        out.overflow = "crop"
        return out
