"""Dashboard panels rendered from a RunSnapshot: header, stage list, step metrics, VRAM gauge, GPU/host, log tail."""
from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.widgets import Static

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


class Panel(Static):
    """A bordered Static that re-renders from each snapshot."""

    def __init__(self, title: str, *, id: str | None = None):
        super().__init__("", id=id, classes="panel")
        self.border_title = title
        self._last = None

    def show(self, snap: RunSnapshot) -> None:
        content = self.build(snap)
        key = content.plain if isinstance(content, Text) else None
        if key is None or key != self._last:
            self._last = key
            self.update(content)

    def build(self, snap: RunSnapshot):  # pragma: no cover - overridden
        return Text("")


class HeaderBar(Static):
    """One line: run, profile, phase, stage, attempt, DEVICE_BS, SEQ_LEN, W&B run."""

    def show(self, snap: RunSnapshot) -> None:
        t = Text(" nanotui ", "bold reverse")
        t.append(f" {snap.profile} ", "bold")
        t.append(f"{snap.run_id}  ", "dim")
        t.append(snap.phase.upper(), PHASE_STYLE.get(snap.phase, "bold"))
        if snap.stage:
            n = len(snap.stages)
            t.append(f"  {snap.stage}", "bold")
            if snap.stage_index is not None and n:
                t.append(f" ({snap.stage_index + 1}/{n})", "dim")
        t.append("  attempt ", "dim")
        t.append(str(snap.attempt if snap.attempt is not None else "–"))
        t.append("  DEVICE_BS ", "dim")
        t.append(str(snap.device_bs if snap.device_bs is not None else "–"))
        t.append("  SEQ_LEN ", "dim")
        t.append(str(snap.seq_len if snap.seq_len is not None else "–"))
        t.append("  W&B ", "dim")
        t.append(snap.wandb_run or "–")
        if not snap.supervisor_alive and snap.phase in ("running", "waiting", "starting"):
            t.append("  (no supervisor)", "bold red")
        if not snap.history_loaded:
            t.append("  loading history…", "italic dim")
        self.update(t)


class StagesPanel(Panel):
    def build(self, snap: RunSnapshot):
        table = Table.grid(padding=(0, 1), expand=True)
        table.add_column(width=1)
        table.add_column(ratio=1, no_wrap=True, overflow="ellipsis")
        table.add_column(justify="right", no_wrap=True)
        table.add_column(justify="right", no_wrap=True)
        for row in snap.stages:
            glyph, style = STATE_GLYPH.get(row.state, ("?", ""))
            name = row.name + (f" a{row.attempts}" if row.attempts > 1 else "")
            eta = "" if row.state in ("done", "pending") or row.eta_s is None else fmt_duration(row.eta_s)
            table.add_row(Text(glyph, style), Text(name, "bold" if row.state in ("running", "waiting") else ""),
                          Text(fmt_duration(row.elapsed_s) if row.elapsed_s is not None else "", "dim"),
                          Text(eta, "yellow"))
        if snap.pipeline_eta_s is not None:
            more = "" if snap.pipeline_eta_complete else "≥"
            self.border_subtitle = f"pipeline ETA {more}{fmt_duration(snap.pipeline_eta_s)}"
        else:
            self.border_subtitle = "done" if snap.phase == "done" else ""
        return table

    def show(self, snap: RunSnapshot) -> None:
        self.update(self.build(snap))


class MetricsPanel(Panel):
    def build(self, snap: RunSnapshot) -> Text:
        m = snap.metrics
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
            self.border_title = "VRAM (host memory)"
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
        t.append(bar(used / total, width) + "\n", style)
        if g.proc_mem is not None:
            t.append("run ", "dim")
            t.append(f"{gib(g.proc_mem)} GiB ({100 * g.proc_mem / total:.0f}% of card)")
        t.append("\n")
        t.append(sparkline(g.mem_trend, width) or "", style)
        self.border_title = f"VRAM {g.name or ''}".rstrip()
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
    def build(self, snap: RunSnapshot) -> Text:
        height = max(1, self.content_size.height or 6)
        lines = snap.log_tail[-height:]
        t = Text(no_wrap=True, overflow="ellipsis")
        for i, line in enumerate(lines):
            style = "red" if ("Error" in line or "OOM" in line) else ("dim" if line.startswith("──") else "")
            t.append(line, style)
            if i < len(lines) - 1:
                t.append("\n")
        self.border_title = f"log {snap.log_name or ''}".rstrip()
        return t
