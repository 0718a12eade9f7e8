"""Dashboard panels rendered from a RunSnapshot: header, stage list, step metrics, VRAM gauge, GPU/host, log tail."""
from __future__ import annotations

from rich.control import strip_control_codes
from rich.table import Table
from rich.text import Text
from textual.widgets import Static

from nanotui.core.runstate import LIVE_PHASES
from nanotui.tui.model import RunSnapshot

GIB = 1024 ** 3
SPARK = "▁▂▃▄▅▆▇█"
HEADROOM_WARN_FRAC = 0.10   # warning colour below 10 % free VRAM ...
HEADROOM_WARN_GIB = 1.0     # ... or below 1 GiB, whichever is larger
PHASE_STYLE = {"running": "bold green", "starting": "bold green", "waiting": "bold yellow", "stopped": "bold",
               "done": "bold cyan", "failed": "bold red"}
STATE_GLYPH = {"done": ("✔", "green"), "running": ("▶", "bold green"), "waiting": ("⏸", "bold yellow"),
               "failed": ("✗", "red"), "stopped": ("■", "yellow"), "pending": ("·", "dim"),
               "skipped": ("–", "dim"), "crashed": ("✗", "red")}


def fmt_duration(s: float | None) -> str:
    if s is None:
        return "–"
    s = max(0, int(s))
    if s >= 86400:
        return f"{s // 86400}d{(s % 86400) // 3600:02d}h"
    if s >= 3600:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


def fmt_num(v: float | None, digits: int = 2) -> str:
    if v is None:
        return "–"
    if abs(v) >= 1e6:
        return f"{v / 1e6:.2f}M"
    if abs(v) >= 1e4:
        return f"{v / 1e3:.1f}k"
    return f"{v:,.{digits}f}" if isinstance(v, float) else f"{v:,}"


def gib(b: int | None) -> str:
    return "–" if b is None else f"{b / GIB:.1f}"


def sparkline(values, width: int, lo: float | None = 0.0, hi: float | None = 1.0) -> str:
    """Block sparkline of the last `width` values (max per bucket when there are more)."""
    vals = list(values)
    if not vals or width <= 0:
        return ""
    if len(vals) > width:
        step = len(vals) / width
        vals = [max(vals[int(i * step): max(int(i * step) + 1, int((i + 1) * step))]) for i in range(width)]
    lo = min(vals) if lo is None else lo
    hi = max(vals) if hi is None else hi
    span = (hi - lo) or 1.0
    return "".join(SPARK[min(7, max(0, int((v - lo) / span * 7.999)))] for v in vals)


def bar(frac: float, width: int) -> str:
    frac = min(1.0, max(0.0, frac))
    full = int(frac * width)
    part = "▏▎▍▌▋▊▉"[int((frac * width - full) * 7)] if full < width and frac * width - full >= 1 / 7 else ""
    return ("█" * full + part).ljust(width, "·")


def marker_bar(frac: float, marker: float | None, width: int) -> tuple[str, int | None]:
    """`bar(frac)` with `│` at the fraction `marker` (the predicted peak); returns (text, marker column|None)."""
    text = bar(frac, width)
    if marker is None or not marker > 0:
        return text, None
    col = min(width - 1, int(min(1.0, marker) * width))
    return text[:col] + "│" + text[col + 1:], col


def text_key(t: Text) -> tuple:
    """What a Text looks like on screen (characters and styles): two equal keys render the same."""
    return (t.plain, tuple(t.spans), str(t.style))


def set_border(widget, title: str | None = None, subtitle: str | None = None) -> None:
    """Assign border title/subtitle only when they differ: Textual repaints the widget on every assignment."""
    if title is not None and getattr(widget, "_title_raw", None) != title:
        widget._title_raw = title
        widget.border_title = title
    if subtitle is not None and getattr(widget, "_subtitle_raw", None) != subtitle:
        widget._subtitle_raw = subtitle
        widget.border_subtitle = subtitle


class Panel(Static):
    """A bordered Static rebuilt from each snapshot; Textual repaints it only when what it shows changed.

    Sizes come from the stylesheet, never from the content, so updates skip the layout pass."""

    def __init__(self, title: str, *, id: str | None = None):
        super().__init__("", id=id, classes="panel")
        set_border(self, title=title)
        self._shown: tuple | None = None
        self._snap: RunSnapshot | None = None
        self.repaints = 0  # how often the content really changed (tests and the benchmark read it)

    def show(self, snap: RunSnapshot) -> None:
        self._snap = snap
        inputs = self.inputs(snap)
        content = None
        if inputs is None:  # compare what was built
            content = self.build(snap)
            inputs = self.content_key(content)
        key = (self.content_size, inputs)
        if key != self._shown:
            self._shown = key
            self.repaints += 1
            self.update(self.build(snap) if content is None else content, layout=False)

    def inputs(self, snap: RunSnapshot) -> object | None:
        """The snapshot pieces this panel shows, when cheaper to compare than building it (None: build, compare)."""
        return None

    def on_resize(self) -> None:
        if self._snap is not None:  # widths/heights feed the bars, sparklines and the log tail
            self.show(self._snap)

    def content_key(self, content) -> object:
        return text_key(content) if isinstance(content, Text) else id(content)

    def build(self, snap: RunSnapshot):  # pragma: no cover - overridden
        return Text("")


class HeaderBar(Static):
    """One line: run, profile, phase, stage, attempt, DEVICE_BS, SEQ_LEN, W&B run (shorter labels when narrow)."""

    _shown: tuple | None = None
    _snap: RunSnapshot | None = None

    @staticmethod
    def build(snap: RunSnapshot, compact: bool = False) -> Text:
        t = Text()
        if not compact:
            t.append(" nanotui ", "bold reverse")
            t.append(f" {snap.profile} ", "bold")
            t.append(f"{snap.run_id}  ", "dim")
        else:
            t.append(" ")
        t.append(snap.phase.upper(), PHASE_STYLE.get(snap.phase, "bold"))
        if snap.stage:
            n = len(snap.stages)
            t.append(f"  {snap.stage}" if not compact else f" {snap.stage}", "bold")
            if snap.stage_index is not None and n:
                t.append(f" ({snap.stage_index + 1}/{n})" if not compact else f" {snap.stage_index + 1}/{n}", "dim")
        labels = (" a", " BS ", " SEQ ", " W&B ") if compact else ("  attempt ", "  DEVICE_BS ", "  SEQ_LEN ", "  W&B ")
        wandb = snap.wandb_run
        if snap.wandb_url and not compact:
            wandb = snap.wandb_url           # the run page, clickable in most terminals
        values = (snap.attempt, snap.device_bs, snap.seq_len, wandb)
        for label, value in zip(labels, values):
            t.append(label, "dim")
            t.append(str(value) if value not in (None, "") else "–")
        if snap.wandb_error and not snap.wandb_url and snap.wandb_run not in (None, "", "dummy"):
            t.append("  W&B off" if not compact else " W&B off", "bold yellow")
        if compact:
            t.append(f" {snap.profile}", "dim")
        if not snap.supervisor_alive and snap.phase in LIVE_PHASES:
            t.append("  (no supervisor)" if not compact else " (no supervisor)", "bold red")
        if snap.problem:
            t.append(f"  {snap.problem}" if not compact else f" {snap.problem[:40]}", "bold red")
        if not snap.history_loaded:
            t.append("  loading history…" if not compact else " loading…", "italic dim")
        return t

    def show(self, snap: RunSnapshot) -> None:
        self._snap = snap
        t = self.build(snap)
        if self.size.width and t.cell_len > self.size.width:
            t = self.build(snap, compact=True)
        key = text_key(t)
        if key != self._shown:
            self._shown = key
            self.update(t, layout=False)

    def on_resize(self) -> None:
        if self._snap is not None:
            self.show(self._snap)


def current_stage_index(snap: RunSnapshot) -> int:
    """The row to keep in view: the running/waiting stage, else the state's index, else the last one started."""
    for i, row in enumerate(snap.stages):
        if row.state in ("running", "waiting"):
            return i
    if snap.stage_index is not None and 0 <= snap.stage_index < len(snap.stages):
        return snap.stage_index
    started = [i for i, row in enumerate(snap.stages) if row.state != "pending"]
    return started[-1] if started else 0


def stage_window(n: int, current: int, height: int) -> tuple[int, int]:
    """Rows [start, end) of `n` stages that fit `height` lines with `current` (and the one before it) in view;
    a hidden part above or below costs one line for its "… N earlier/more" row."""
    if n <= height:
        return 0, n
    if height < 3:
        start = min(max(0, current), max(0, n - height))
        return start, start + max(1, height)
    start = max(0, current - 1)
    if start == 0:
        return 0, height - 1
    if start + height - 1 >= n:  # the end is in view: fill the panel from below
        return n - (height - 1), n
    return start, start + height - 2


class StagesPanel(Panel):
    """One row per stage: state glyph, name (+attempt), elapsed, ETA; the pipeline ETA as the subtitle."""

    def rows(self, snap: RunSnapshot) -> tuple:
        stages = list(snap.stages)
        height = self.content_size.height or len(stages)
        start, end = stage_window(len(stages), current_stage_index(snap), height)
        hints = height >= 3  # "… N earlier/more" rows only when there is room for them
        out = [("…", "dim", f"{start} earlier", False, "", "")] if start and hints else []
        for row in stages[start:end]:
            glyph, style = STATE_GLYPH.get(row.state, ("?", ""))
            name = row.name + (f" a{row.attempts}" if row.attempts > 1 else "")
            eta = "" if row.state in ("done", "pending") or row.eta_s is None else fmt_duration(row.eta_s)
            out.append((glyph, style, name, row.state in ("running", "waiting"),
                        fmt_duration(row.elapsed_s) if row.elapsed_s is not None else "", eta))
        if end < len(stages) and hints:
            out.append(("…", "dim", f"{len(stages) - end} more", False, "", ""))
        return tuple(out)

    def build(self, snap: RunSnapshot) -> Table:
        table = Table.grid(padding=(0, 1), expand=True)
        table.add_column(width=1)
        table.add_column(ratio=1, no_wrap=True, overflow="ellipsis")
        table.add_column(justify="right", no_wrap=True)
        table.add_column(justify="right", no_wrap=True)
        for glyph, style, name, active, elapsed, eta in self.rows(snap):
            table.add_row(Text(glyph, style), Text(name, "bold" if active else ""), Text(elapsed, "dim"),
                          Text(eta, "yellow"))
        return table

    def show(self, snap: RunSnapshot) -> None:
        self._snap = snap
        if snap.pipeline_eta_s is not None:
            more = "" if snap.pipeline_eta_complete else "≥"
            set_border(self, subtitle=f"pipeline ETA {more}{fmt_duration(snap.pipeline_eta_s)}")
        else:
            set_border(self, subtitle="done" if snap.phase == "done" else "")
        key = (self.content_size, self.rows(snap))
        if key != self._shown:
            self._shown = key
            self.repaints += 1
            self.update(self.build(snap), layout=False)


class MetricsPanel(Panel):
    """Step/total, ETA, loss and val, tok/s, MFU, lrm, dt of the stage shown in the title."""

    def build(self, snap: RunSnapshot) -> Text:
        m = snap.metrics
        set_border(self, title=f"training · {snap.metrics_stage}" if snap.metrics_stage else "training")
        t = Text()
        if m.step is not None:
            t.append("step ", "dim")
            t.append(f"{m.step:,}", "bold")
            if m.total:
                t.append(f"/{m.total:,}", "dim")
                t.append(f" {100 * m.step / m.total:4.1f}%", "cyan")
        else:
            t.append("step –", "dim")
        t.append("  ETA ", "dim")
        t.append(fmt_duration(snap.stage_eta_s), "yellow")
        t.append("\nloss ", "dim")
        t.append(f"{m.loss:.4f}" if m.loss is not None else "–", "bold bright_blue")
        t.append("  val ", "dim")
        t.append(f"{m.val_bpb:.4f}" if m.val_bpb is not None else "–", "magenta")
        t.append("\ntok/s ", "dim")
        t.append(fmt_num(m.tok_per_sec, 0), "bold")
        t.append("  MFU ", "dim")
        t.append(f"{m.mfu:.1f}%" if m.mfu is not None else "n/a")
        t.append("\nlrm ", "dim")
        t.append(f"{m.lrm:.2f}" if m.lrm is not None else "–")
        t.append("  dt ", "dim")
        t.append(f"{m.dt_ms:,.0f}ms" if m.dt_ms is not None else "–")
        return t


class VramPanel(Panel):
    """VRAM gauge with headroom, own share and trend; without a GPU: why, plus host memory."""

    def build(self, snap: RunSnapshot) -> Text:
        g = snap.gpu
        width = max(10, (self.content_size.width or 30) - 2)
        t = Text()
        if not g.available or not g.mem_total:
            t.append("no GPU: ", "bold yellow")
            t.append(f"{g.reason or 'unknown'}\n", "yellow")
            if g.ram_total:
                frac = (g.ram_used or 0) / g.ram_total
                t.append("host RAM ", "dim")
                t.append(f"{gib(g.ram_used)}/{gib(g.ram_total)} GiB\n")
                t.append(bar(frac, width) + "\n", "cyan")
                t.append(sparkline(g.ram_trend, width) or "", "cyan")
            set_border(self, title="VRAM (host memory)", subtitle="")
            return t
        used, total = g.mem_used or 0, g.mem_total
        free = max(0, total - used)
        free_frac = free / total
        warn = free < max(HEADROOM_WARN_GIB * GIB, HEADROOM_WARN_FRAC * total)
        style = "bold red" if warn else ("yellow" if free_frac < 0.25 else "green")
        t.append(f"{gib(used)}/{gib(total)}G", "bold")
        t.append(f" free {free / GIB:.1f}G {100 * free_frac:.0f}%", style)
        if warn:
            t.append(" LOW", "bold red reverse")
        t.append("\n")
        pred = snap.vram_predicted_gib
        line, col = marker_bar(used / total, pred * GIB / total if pred else None, width)
        if col is None:
            t.append(line + "\n", style)
        else:
            t.append(line[:col], style)
            t.append(line[col], "bold magenta")
            t.append(line[col + 1:] + "\n", style)
        if g.proc_mem is not None:
            t.append("run ", "dim")
            t.append(f"{gib(g.proc_mem)} GiB ({100 * g.proc_mem / total:.0f}% of card)")
        t.append("\n")
        t.append(sparkline(g.mem_trend, width) or "", style)
        subtitle = ""
        if pred:  # the marker's legend: predicted peak of this stage at this batch (and the probe's measurement)
            subtitle = f"│ predicted {pred:.1f}G"
            probe = snap.vram_probe or {}
            row = next((r for r in probe.get("rows") or [] if r.get("device_bs") == probe.get("device_bs")), None)
            if row and row.get("reserved_gib") is not None:
                subtitle += f" · probe {row['reserved_gib']:.1f}G"
        set_border(self, title=f"VRAM {g.name or ''}".rstrip(), subtitle=subtitle)
        return t


class SystemPanel(Panel):
    def build(self, snap: RunSnapshot) -> Text:
        g = snap.gpu
        t = Text()
        if g.available:
            t.append("GPU ", "dim")
            t.append(f"{g.util:.0f}%" if g.util is not None else "n/a", "bold")
            t.append("  ", "dim")
            t.append(f"{g.temp:.0f}°C" if g.temp is not None else "n/a")
            t.append("  ", "dim")
            t.append(f"{g.power_w:.0f}W" if g.power_w is not None else "n/a")
            t.append("\n")
        t.append("CPU ", "dim")
        t.append(f"{g.cpu_pct:.0f}%" if g.cpu_pct is not None else "n/a", "bold")
        t.append("  RAM ", "dim")
        t.append(f"{gib(g.ram_used)}/{gib(g.ram_total)} GiB" if g.ram_total else "n/a")
        width = max(8, (self.content_size.width or 30) - 5)
        if g.cpu_trend:
            t.append("\ncpu ", "dim")
            t.append(sparkline(g.cpu_trend, width, 0.0, 100.0), "cyan")
        return t


class LogTail(Panel):
    """The last lines of the current stage log that fit; errors in red, attempt separators dimmed."""

    def inputs(self, snap: RunSnapshot) -> object:
        return snap.log_tail[-max(1, self.content_size.height or 6):], snap.log_name

    def build(self, snap: RunSnapshot) -> Text:
        lines = [strip_control_codes(s) for s in snap.log_tail[-max(1, self.content_size.height or 6):]]
        t = Text("\n".join(lines), no_wrap=True, overflow="ellipsis")
        pos = 0
        for line in lines:
            style = "red" if ("Error" in line or "OOM" in line) else ("dim" if line.startswith("──") else "")
            if style:
                t.stylize(style, pos, pos + len(line))
            pos += len(line) + 1
        set_border(self, title=f"log {snap.log_name or ''}".rstrip())
        return t
