"""The TUI's data layer: RunView reads a run directory (runtime), parses logs (core), keeps bounded history, emits snapshots.

Widgets never touch files: a worker thread owns one RunView, calls attach() (fast: log tail + state),
load_history() (every log from the start) and then poll() on a timer; each returns an immutable RunSnapshot.
"""
from __future__ import annotations

import os
import re
import time
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from nanotui.core.runstate import LIVE_PHASES, TRAIN_STAGES
from nanotui.runtime.rundir import RunDir, RunNotFound, shown
from nanotui.runtime.tail import LogTailer, read_tail
from nanotui.tui import coreapi
from nanotui.tui.widgets.chart import ChartData

LOG_NAME_RE = re.compile(r"^(\d+)-(.+)-a(\d+)\.log$")
TAIL_BYTES = 128 * 1024
LOG_TAIL_LINES = 500
GPU_TREND = 120  # samples (≈ 2 minutes at 1 Hz)


class Decimator:
    """A bounded (x, ymin, ymax) series: past `cap` buckets it merges neighbours, so memory stays O(cap)."""

    def __init__(self, cap: int = 2048):
        self.cap = cap
        self.stride = 1  # raw points per bucket
        self.buckets: list[list[float]] = []  # [x_first, ymin, ymax, n]
        self._points: tuple | None = None

    def __len__(self) -> int:
        return len(self.buckets)

    def append(self, x: float, y: float) -> None:
        last = self.buckets[-1] if self.buckets else None
        if last is not None and last[3] < self.stride and x >= last[0]:
            last[3] += 1
            if y < last[1] or y > last[2]:
                last[1] = min(last[1], y)
                last[2] = max(last[2], y)
                self._points = None
            return
        self._points = None
        self.buckets.append([x, y, y, 1])
        if len(self.buckets) > self.cap:
            merged = []
            for i in range(0, len(self.buckets) - 1, 2):
                a, b = self.buckets[i], self.buckets[i + 1]
                merged.append([a[0], min(a[1], b[1]), max(a[2], b[2]), a[3] + b[3]])
            if len(self.buckets) % 2:
                merged.append(self.buckets[-1])
            self.buckets = merged
            self.stride *= 2

    def truncate(self, x: float) -> None:
        """Drop everything from step `x` on (a restart re-runs those steps)."""
        while self.buckets and self.buckets[-1][0] >= x:
            self.buckets.pop()
            self._points = None

    def points(self) -> tuple[tuple[float, float, float], ...]:
        """The buckets as (x, ymin, ymax); the same tuple object until the series changes (cheap to compare)."""
        if self._points is None:
            self._points = tuple((b[0], b[1], b[2]) for b in self.buckets)
        return self._points


@dataclass
class StageHistory:
    """Everything the chart needs about one training stage, bounded."""
    loss: Decimator = field(default_factory=Decimator)
    val: deque = field(default_factory=lambda: deque(maxlen=512))
    markers: dict = field(default_factory=dict)  # (step, kind) -> None, insertion ordered
    total: int | None = None
    last_step: int | None = None
    device_bs: int | None = None  # the batch size of the latest attempt, for batch-change markers
    restart_step: int | None = None  # where the latest attempt resumed

    def add_step(self, step: int, loss: float) -> None:
        if self.last_step is not None and step <= self.last_step:
            self.loss.truncate(step)
            while self.val and self.val[-1][0] > step:
                self.val.pop()
        self.loss.append(step, loss)
        self.last_step = step

    def add_val(self, step: int, value: float) -> None:
        while self.val and self.val[-1][0] >= step:
            self.val.pop()
        self.val.append((step, value))

    def mark(self, step: int | None, kind: str) -> None:
        """One marker per (step, kind); an OOM seen both in the log and in events.jsonl counts once."""
        if kind == "oom" and step is not None and any(k == "oom" and abs(s - step) <= 2 for s, k in self.markers):
            return
        if isinstance(step, bool) or not isinstance(step, (int, float)):
            return  # a marker needs a numeric step ("latest" and the like are resolved by the caller)
        if (step, kind) not in self.markers:
            if len(self.markers) > 2000:
                self.markers.pop(next(iter(self.markers)))
            self.markers[(step, kind)] = None


@dataclass(frozen=True)
class StageRow:
    name: str
    state: str
    elapsed_s: float | None
    eta_s: float | None
    attempts: int
    device_bs: int | None
    trains: bool


@dataclass(frozen=True)
class GpuView:
    available: bool
    reason: str | None = None
    name: str | None = None
    mem_used: int | None = None
    mem_total: int | None = None
    proc_mem: int | None = None
    util: float | None = None
    temp: float | None = None
    power_w: float | None = None
    mem_trend: tuple[float, ...] = ()
    cpu_pct: float | None = None
    ram_used: int | None = None
    ram_total: int | None = None
    cpu_trend: tuple[float, ...] = ()
    ram_trend: tuple[float, ...] = ()
    age_s: float | None = None


@dataclass(frozen=True)
class StepView:
    step: int | None = None
    total: int | None = None
    loss: float | None = None
    tok_per_sec: float | None = None
    mfu: float | None = None
    lrm: float | None = None
    dt_ms: float | None = None
    val_bpb: float | None = None


@dataclass(frozen=True)
class RunSnapshot:
    """One immutable picture of a run: what every widget renders from."""
    run_id: str
    path: Path
    profile: str = "?"
    phase: str = "starting"
    stage: str | None = None
    stage_index: int | None = None
    attempt: int | None = None
    device_bs: int | None = None
    seq_len: int | None = None
    wandb_run: str | None = None
    wandb_url: str | None = None    # the W&B run page (state.json `wandb_url`, from the stage's log)
    wandb_error: str | None = None  # why W&B logging is off (state.json `wandb_error`)
    reason: str | None = None
    supervisor_alive: bool = False
    stages: tuple[StageRow, ...] = ()
    stage_eta_s: float | None = None
    pipeline_eta_s: float | None = None
    pipeline_eta_complete: bool = False
    metrics: StepView = StepView()
    metrics_stage: str | None = None  # the stage `metrics` belong to
    chart: ChartData = ChartData()
    chart_stage: str | None = None
    training_stages: tuple[str, ...] = ()
    gpu: GpuView = GpuView(available=False, reason="no samples yet")
    log_tail: tuple[str, ...] = ()
    log_name: str | None = None
    pending_oom: dict | None = None
    last_checkpoint: dict | None = None
    grace: object = None
    problem: str | None = None      # e.g. "disk full: cannot write state.json" (state.problem or a corrupt state)
    history_loaded: bool = False
    now: float = 0.0
    vram_predicted_gib: float | None = None  # predictor's training peak of this stage at device_bs (core/vramplan)
    vram_probe: dict | None = None           # this stage's --device_batch_size=auto record (state.json `probes`)


def _step_of(value) -> int | None:
    """A step/batch number from a JSON field that may be an int, a numeric string, "latest", None or missing."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def _number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def file_signature(path: Path) -> tuple[int, int, int, int] | None:
    """(inode, size, mtime_ns, ctime_ns) or None when missing: equal signatures mean no need to read it again."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


_UNSEEN = object()


def log_key(p: Path) -> tuple[int, int, str]:
    m = LOG_NAME_RE.match(p.name)
    return (int(m.group(1)), int(m.group(3)), m.group(2)) if m else (10 ** 9, 0, p.name)


class RunView:
    """Reads one run directory incrementally. Not thread-safe: one worker thread owns it."""

    def __init__(self, run_dir: Path, clock: Callable[[], float] = time.time, chart_cap: int = 2048):
        self.rd = RunDir(run_dir)
        self.clock = clock
        self.chart_cap = chart_cap
        self.plan: dict = {}
        self.state: dict = {}
        self.history: dict[str, StageHistory] = {}
        self.metrics: dict[str, StepView] = {}
        self.log_tail: deque[str] = deque(maxlen=LOG_TAIL_LINES)
        self.tail_log: Path | None = None
        self.tailer: LogTailer | None = None
        self.parser = None
        self.event_offset = 0
        self.gpu_samples: deque[dict] = deque(maxlen=GPU_TREND)
        self.history_loaded = False
        self.chart_stage: str | None = None
        self._alive = False
        self._alive_checked = 0.0
        self._state_problem: str | None = None
        self.estimator = coreapi.Estimator([])
        self._signatures: dict[Path, object] = {}
        self._logs: list[Path] = []
        # events at or below this offset of events.jsonl are history (read at attach): never announced
        self._announced_upto: int | None = None
        self._notices: list[coreapi.Notice] = []

    # ---- helpers -----------------------------------------------------------------------------
    def _changed(self, path: Path) -> bool:
        """True the first time and whenever `path` was replaced, grew or was touched since the last call."""
        sig = file_signature(path)
        if self._signatures.get(path, _UNSEEN) == sig:
            return False
        self._signatures[path] = sig
        return True

    def _stage_of_log(self, path: Path) -> str:
        return log_key(path)[2]

    def _trains(self) -> dict[str, bool]:
        return {s.get("name"): bool(s.get("trains")) for s in self.plan.get("stages", [])}

    def _hist(self, stage: str) -> StageHistory:
        h = self.history.get(stage)
        if h is None:
            h = self.history[stage] = StageHistory(loss=Decimator(self.chart_cap))
        return h

    def _feed(self, stage: str, lines: list[str], parser, keep_tail: bool) -> None:
        """Parse lines of one stage log into history/metrics (and the visible tail)."""
        h = self._hist(stage)
        m = self.metrics.get(stage, StepView())
        last_step_ev = None
        now = self.clock()
        for ev in coreapi.parse_lines(parser, lines):
            self.estimator.observe(stage, ev, now)
            kind = type(ev).__name__
            if kind == "Step":
                h.add_step(ev.step, ev.loss)
                if ev.total:
                    h.total = ev.total
                last_step_ev = ev
            elif kind == "ValBpb":
                h.add_val(ev.step, ev.bpb)
                m = replace(m, val_bpb=ev.bpb)
            elif kind == "ValLoss":
                h.add_val(ev.step, ev.loss)
                m = replace(m, val_bpb=ev.loss)
            elif kind == "CheckpointSaved":
                h.mark(ev.step, "checkpoint")
            elif kind == "Oom":
                h.mark(ev.step if ev.step is not None else h.last_step, "oom")
            elif kind == "Divergence":
                h.mark(ev.step, "divergence")
            elif kind == "ResumedFrom":  # `Resuming optimization from step N`: where this attempt continues
                h.mark(ev.step, "restart")
        if last_step_ev is not None:
            ev = last_step_ev
            m = replace(m, step=ev.step, total=ev.total or h.total, loss=ev.loss, tok_per_sec=ev.tok_per_sec,
                        mfu=ev.mfu, lrm=ev.lrm, dt_ms=ev.dt_ms)
        self.metrics[stage] = m
        if keep_tail:
            self.log_tail.extend(coreapi.clean_line(s) for s in lines)

    def _read_events(self) -> None:
        sig = file_signature(self.rd.events_path)
        if sig is None or sig[1] == self.event_offset:  # append-only: same size, nothing new
            return
        for ev, off in self.rd.iter_events_with_offsets(self.event_offset):
            self.event_offset = off
            if self._announced_upto is not None and off > self._announced_upto:
                self._announced_upto = off
                notice = coreapi.notice_for_event(ev)
                if notice is not None:
                    self._notices.append(notice)
            kind, stage = ev.get("type"), ev.get("stage")
            if not stage:
                continue
            h = self._hist(stage)
            if kind == "checkpoint":
                h.mark(_step_of(ev.get("step")), "checkpoint")
            elif kind == "oom":
                h.mark(_step_of(ev.get("step")), "oom")
            elif kind == "divergence":  # the onset step, and where the rollback went back to
                h.mark(_step_of(ev.get("step")), "divergence")
            elif kind == "rollback":
                step = _step_of(ev.get("from_step"))
                h.mark(step if step is not None else 0, "rollback")
                h.restart_step = step if step is not None else 0
            elif kind in ("resumed", "fallback", "retry"):
                # core.runstate.EVENT_FIELDS: resumed/fallback/retry {step: int | "latest"} (+ ckpt_step for
                # fallback/retry; runs recorded before that vocabulary wrote fallback's point as `resume`).
                # "latest" means the newest checkpoint of the stage.
                step = _step_of(ev.get("step") if "step" in ev else ev.get("resume"))
                if step is None:
                    step = _step_of(ev.get("ckpt_step"))
                if step is None:
                    step = max((s for s, k in h.markers if k == "checkpoint"), default=0)
                h.mark(step, "restart")
                h.restart_step = step
            elif kind == "stage_started":
                bs = _step_of(ev.get("device_bs"))
                if bs is not None:
                    if h.device_bs is not None and bs != h.device_bs:
                        h.mark(h.restart_step if h.restart_step is not None else h.last_step, "batch")
                    h.device_bs = bs

    def _read_gpu(self, n: int) -> None:
        if not self._changed(self.rd.gpu_path):
            return
        last_t = self.gpu_samples[-1].get("t", 0) if self.gpu_samples else -1
        for s in self.rd.read_gpu(tail=n):
            if s.get("t", 0) > last_t:
                self.gpu_samples.append(s)

    def _follow(self, log: Path | None, offset: int) -> None:
        if log == self.tail_log:
            return
        if self.tailer:
            self.tailer.close()
        self.tail_log = log
        self.tailer = LogTailer(log, offset=offset) if log else None
        self.parser = coreapi.new_parser(self._stage_of_log(log)) if log else None

    def _current_log(self) -> Path | None:
        if self._changed(self.rd.logs_dir):  # a new attempt log changes the directory's mtime
            self._logs = self.rd.list_logs()
        logs = self._logs
        name = self.state.get("log")
        if name and (self.rd.path / name).exists():
            return self.rd.path / name
        return logs[-1] if logs else None

    def rd_problem(self, st: dict) -> str | None:
        """What the header warns about: a state.json that cannot be trusted, or a problem the supervisor reports."""
        problem = self._state_problem or st.get("problem")
        return shown(problem) if problem else None

    def _refresh_state(self) -> None:
        now = time.monotonic()
        slow_tick = now - self._alive_checked > 5
        # state.json is replaced atomically; a re-read every few seconds covers a reused inode within one mtime tick
        if self._changed(self.rd.state_json) or slow_tick:
            self.state = self.rd.read_state()
            self._state_problem = self.rd.state_problem()
        if slow_tick:
            self._alive = self.rd.supervisor_alive()
            self._alive_checked = now

    # ---- the three phases -------------------------------------------------------------------
    def attach(self) -> RunSnapshot:
        """Fast first picture: plan, state, events, recent GPU samples and the current log's tail only."""
        try:
            self.plan = self.rd.read_plan()
        except RunNotFound:
            self.plan = {}
        self.estimator = coreapi.Estimator(self.plan.get("stages", []))
        self._refresh_state()
        self._read_events()
        self._announced_upto = self.event_offset  # what is there now is history; what comes later is news
        self._read_gpu(GPU_TREND)
        log = self._current_log()
        if log is not None:
            lines, end = read_tail(log, TAIL_BYTES)
            parser = coreapi.new_parser(self._stage_of_log(log))
            self._feed(self._stage_of_log(log), lines, parser, keep_tail=True)
            self._follow(log, end)
            self.parser = parser
        return self.snapshot()

    def load_history(self) -> RunSnapshot:
        """Parse every log of the run from the start (whole-run chart); the live tail is kept."""
        current = self.tail_log
        keep_metrics = dict(self.metrics)
        fresh: dict[str, StageHistory] = {}
        self.history = fresh
        self.estimator = coreapi.Estimator(self.plan.get("stages", []))
        self.event_offset = 0
        self._read_events()  # supervisor-recorded markers first: they win over log-derived duplicates
        seen: set[str] = set()
        for log in self.rd.list_logs():
            stage = self._stage_of_log(log)
            parser = coreapi.new_parser(stage)
            if stage in seen:
                self.estimator.restart(stage, self.clock())
            seen.add(stage)
            end = self.tailer.offset if (current is not None and log == current and self.tailer) else None
            with open(log, "rb") as f:
                data = f.read(end) if end is not None else f.read()
            if end is None and not data.endswith(b"\n"):
                data = data[: data.rfind(b"\n") + 1]
            lines = data.decode("utf-8", "replace").split("\n")[:-1]
            for i in range(0, len(lines), 20000):
                self._feed(stage, lines[i: i + 20000], parser, keep_tail=False)
            if log == current:
                self.parser = parser
        self.metrics.update({k: v for k, v in keep_metrics.items() if v.step is not None})
        self.history_loaded = True
        return self.snapshot()

    def poll(self) -> RunSnapshot:
        """Pick up what changed since the last call: state, events, GPU samples, new log lines."""
        self._refresh_state()
        self._read_events()
        self._read_gpu(8)
        log = self._current_log()
        if log != self.tail_log:
            if self.tailer is not None:  # finish the old log first
                rest = self.tailer.read_lines() + self.tailer.flush_partial()
                if rest:
                    self._feed(self._stage_of_log(self.tail_log), rest, self.parser, keep_tail=True)
            self._follow(log, 0)
            if log is not None and self._stage_of_log(log) in self.history:
                self.estimator.restart(self._stage_of_log(log), self.clock())
            if log is not None:
                self.log_tail.append(f"── {log.name} ──")
        if self.tailer is not None:
            lines = self.tailer.read_lines(max_bytes=4 << 20)
            if lines:
                self._feed(self._stage_of_log(self.tail_log), lines, self.parser, keep_tail=True)
        return self.snapshot()

    def take_notices(self) -> list[coreapi.Notice]:
        """Notices for events appended since attach() (oom, fallback, stage_done, ...), each returned once."""
        notices, self._notices = self._notices, []
        return notices

    def close(self) -> None:
        if self.tailer:
            self.tailer.close()

    # ---- snapshot ----------------------------------------------------------------------------
    def training_stages(self) -> list[str]:
        trains = self._trains()
        names = [s.get("name") for s in self.plan.get("stages", []) if trains.get(s.get("name"))]
        return [n for n in names if n in self.history and len(self.history[n].loss)] or \
            [n for n in self.history if len(self.history[n].loss)]

    def snapshot(self) -> RunSnapshot:
        now = self.clock()
        st = self.state
        stage = st.get("stage")
        plan_stages = self.plan.get("stages", [])
        trains = self._trains()
        tstages = self.training_stages()
        chart_stage = self.chart_stage if self.chart_stage in tstages else None
        if chart_stage is None:
            chart_stage = stage if stage in tstages else (tstages[-1] if tstages else None)
        metrics_stage = stage if stage in self.metrics else (self.tail_log and self._stage_of_log(self.tail_log))
        metrics = self.metrics.get(metrics_stage or "", StepView())
        if metrics.step is None and chart_stage in self.metrics:  # e.g. a finished run: the last training stage
            metrics_stage, metrics = chart_stage, self.metrics[chart_stage]
        if metrics.step is None and st.get("step") is not None:
            metrics = replace(metrics, step=st.get("step"), total=st.get("total"))

        self.estimator.set_states(st.get("stages") or [])
        rows = []
        for i, s in enumerate(st.get("stages") or [{"name": p.get("name"), "state": "pending"} for p in plan_stages]):
            name = s.get("name")
            started, ended = _number(s.get("started")), _number(s.get("ended"))
            elapsed = (ended or now) - started if started else None
            eta = self.estimator.stage_eta(name, now)
            state = s.get("state") or "pending"
            if state == "running" and st.get("phase") == "waiting" and name == stage:
                state = "waiting"  # the supervisor keeps the row "running" while an OOM decision is pending
            rows.append(StageRow(name=name, state=state, elapsed_s=elapsed, eta_s=eta,
                                 attempts=_step_of(s.get("attempts")) or 0, device_bs=_step_of(s.get("device_bs")),
                                 trains=trains.get(name, False)))
        stage_eta = next((r.eta_s for r in rows if r.name == stage), None)
        pipeline_eta, pipeline_eta_complete = self.estimator.pipeline_eta(now) \
            if st.get("phase") in LIVE_PHASES else (None, False)

        chart = ChartData()
        if chart_stage:
            h = self.history[chart_stage]
            chart = ChartData(title=chart_stage, line=h.loss.points(), points=tuple(h.val),
                              markers=tuple(h.markers), x_max=h.total,
                              points_label="val loss" if chart_stage == "chat_sft" else "val bpb")
        return RunSnapshot(
            run_id=self.rd.run_id, path=self.rd.path, profile=self.plan.get("profile") or "?",
            phase=st.get("phase") or "starting", stage=stage, stage_index=st.get("stage_index"),
            attempt=st.get("attempt"), device_bs=st.get("device_bs"), seq_len=st.get("seq_len"),
            wandb_run=st.get("wandb_run"), wandb_url=shown(st.get("wandb_url")),
            wandb_error=shown(st.get("wandb_error")), reason=st.get("reason"), supervisor_alive=self._alive,
            stages=tuple(rows), stage_eta_s=stage_eta, metrics_stage=metrics_stage or None, pipeline_eta_s=pipeline_eta,
            pipeline_eta_complete=pipeline_eta_complete, metrics=metrics,
            chart=chart, chart_stage=chart_stage, training_stages=tuple(tstages), gpu=self._gpu_view(now),
            log_tail=tuple(self.log_tail), log_name=self.tail_log.name if self.tail_log else None,
            pending_oom=st.get("pending_oom"), last_checkpoint=st.get("last_checkpoint"),
            grace=st.get("grace", self.plan.get("grace")), problem=self.rd_problem(st),
            history_loaded=self.history_loaded, now=now,
            **self._vram_expectation(st, stage))

    def _vram_expectation(self, st: dict, stage: str | None) -> dict:
        """Predicted peak and the probe record of the running stage, for the VRAM panel's marker."""
        from nanotui.core.vramplan import expected_peak
        g = ((self.gpu_samples[-1].get("gpus") or [{}])[0] if self.gpu_samples else {}) or {}
        bs = _step_of(st.get("device_bs"))
        key = (stage, bs, g.get("name"), g.get("mem_total"))
        if getattr(self, "_vram_key", None) != key:  # the predictor runs once per stage/batch/card, not per poll
            try:
                self._vram_pred = expected_peak(self.plan, stage, bs, g.get("name"), g.get("mem_total"))
            except (TypeError, ValueError, KeyError):
                self._vram_pred = None
            self._vram_key = key
        probe = next((p for p in st.get("probes") or [] if isinstance(p, dict) and p.get("stage") == stage), None)
        return {"vram_predicted_gib": self._vram_pred, "vram_probe": probe}

    def _gpu_view(self, now: float) -> GpuView:
        if not self.gpu_samples:
            return GpuView(available=False, reason="no GPU samples recorded yet")
        last = self.gpu_samples[-1]
        host = last.get("host") or {}

        def frac(s, key, total_key):
            h = s.get("host") or {}
            return (h.get(key) or 0) / h.get(total_key) if h.get(total_key) else 0.0

        common = dict(cpu_pct=host.get("cpu_pct"), ram_used=host.get("ram_used"), ram_total=host.get("ram_total"),
                      cpu_trend=tuple(((s.get("host") or {}).get("cpu_pct") or 0.0) for s in self.gpu_samples),
                      ram_trend=tuple(frac(s, "ram_used", "ram_total") for s in self.gpu_samples),
                      age_s=now - last.get("t", now))
        gpus = last.get("gpus") or []
        if not last.get("available") or not gpus:
            return GpuView(available=False, reason=last.get("reason") or "no GPU", **common)
        g = gpus[0]
        trend = []
        for s in self.gpu_samples:
            gg = (s.get("gpus") or [{}])[0]
            if gg.get("mem_total"):
                trend.append((gg.get("mem_used") or 0) / gg["mem_total"])
        return GpuView(available=True, name=g.get("name"), mem_used=g.get("mem_used"), mem_total=g.get("mem_total"),
                       proc_mem=g.get("proc_mem"), util=g.get("util"), temp=g.get("temp"), power_w=g.get("power_w"),
                       mem_trend=tuple(trend), **common)

    def set_chart_stage(self, stage: str | None) -> None:
        self.chart_stage = stage


# ---- data for the secondary screens (called from worker threads or timers, never from widgets) ------------------
CKPT_STAGE_OF = {family: name for name, (family, _kind) in TRAIN_STAGES.items()}  # "base" -> "base_train"


@dataclass(frozen=True)
class CheckpointRow:
    stage: str          # the pipeline stage that trains into this directory (base_train, ...)
    step: int
    time: float
    val_bpb: float | None
    size_bytes: int
    status: str         # valid | unverified | invalid
    path: str
    reason: str = ""
    run_id: str | None = None   # the run that wrote it (meta `run_id`)
    other_run: bool = False     # written by another run than the one attached: never resumed from here


def base_dir_of(run_dir: Path) -> Path:
    """The NANOCHAT_BASE_DIR a run belongs to: run.json's base_dir, else the parent of runs/."""
    try:
        base = RunDir(run_dir).read_plan().get("base_dir")
    except RunNotFound:
        base = None
    if base and Path(base).is_dir():
        return Path(base)
    return Path(run_dir).resolve().parent.parent


def list_checkpoints(base_dir: Path, run_id: str | None = None) -> list[CheckpointRow]:
    """Every checkpoint of the base dir (core discovery), newest stage/step last; with `run_id`, those another run
    wrote are marked `other_run` (a run resumes only from its own lineage)."""
    from nanotui.core.ckpts import discover
    rows = []
    for c in discover(str(base_dir)):
        rows.append(CheckpointRow(stage=CKPT_STAGE_OF.get(c.stage, c.stage), step=c.step, time=c.mtime,
                                  val_bpb=c.val_bpb, size_bytes=c.size_bytes, status=c.status,
                                  path=str(Path(c.path) / f"model_{c.step:06d}.pt"), reason=c.reason,
                                  run_id=c.run_id, other_run=run_id is not None and c.run_id != run_id))
    return rows


def upstream_checkpoint_dirs(run_dir: Path) -> set[str]:
    """Checkpoint directories of the upstream-nanochat training stages this run supervised, its own or, for a whole
    script, its stage runs'. Upstream writes no run id, so a committed step there counts as this run's (as resume
    and `nanotui resume --step` count it)."""
    from nanotui.runtime.rundir import list_runs
    run = RunDir(run_dir)
    runs = [run]
    try:
        runs += [rd for rd in list_runs(run.path.parent.parent) if rd.read_plan().get("parent") == run.run_id]
    except (RunNotFound, OSError, ValueError):
        pass
    dirs = set()
    for rd in runs:
        try:
            stages = rd.read_plan().get("stages") or []
        except (RunNotFound, OSError, ValueError):
            continue
        dirs |= {os.path.normpath(st["ckpt_dir"]) for st in stages
                 if isinstance(st, dict) and st.get("dialect") and st.get("ckpt_dir")}
    return dirs


@dataclass(frozen=True)
class RunSummary:
    run_id: str
    path: Path
    state: str
    profile: str | None
    stage: str | None
    step: int | None
    updated: float | None
    newest_checkpoint: dict | None
    supervisor_alive: bool


def recent_runs(base_dir: Path, limit: int = 50) -> list[RunSummary]:
    from nanotui.runtime.rundir import list_runs
    out = []
    for rd in list_runs(base_dir)[:limit]:
        try:
            s = rd.status_summary()
        except Exception as exc:  # a half-written run must not break the list
            out.append(RunSummary(rd.run_id, rd.path, f"unreadable: {exc}", None, None, None, None, None, False))
            continue
        out.append(RunSummary(run_id=rd.run_id, path=rd.path, state=s.get("state") or "?", profile=s.get("profile"),
                              stage=s.get("stage"), step=s.get("step"), updated=s.get("updated"),
                              newest_checkpoint=s.get("last_checkpoint"), supervisor_alive=bool(s.get("supervisor_alive"))))
    return out


class LogFollower:
    """The logs screen's reader: the last `max_lines` of one log, then new lines as they arrive."""

    def __init__(self, path: Path, max_lines: int = 20000):
        self.path = Path(path)
        self.max_lines = max_lines
        lines, end = read_tail(self.path, 8 << 20)
        self.truncated = end > 0 and len(lines) > 0 and end >= (8 << 20)
        self.lines: deque[str] = deque((coreapi.clean_line(s) for s in lines), maxlen=max_lines)
        self.tailer = LogTailer(self.path, offset=end)

    def poll(self) -> list[str]:
        new = [coreapi.clean_line(s) for s in self.tailer.read_lines(max_bytes=4 << 20)]
        self.lines.extend(new)
        return new

    def close(self) -> None:
        self.tailer.close()


def run_logs(run_dir: Path) -> list[Path]:
    return RunDir(run_dir).list_logs()
