"""Per-stage progress and ETA from step timings, and a whole-pipeline ETA; pure (timestamps passed in)."""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from statistics import median
from typing import Mapping, Optional, Sequence, Union

from .events import (CheckpointSaved, Config, CoreMetric, EvalProgress, EvalResult, ResumedFrom, Sample, Step,
                     StepMetrics, ValBpb, ValLoss)

__all__ = ["StageProgress", "PipelineProgress", "StageEstimate", "PipelineEstimate"]

# events that mean "the trainer is not stepping right now" (eval, sampling, checkpoint writing)
_PAUSE_EVENTS = (ValBpb, CoreMetric, ValLoss, Sample, StepMetrics, EvalResult, EvalProgress, CheckpointSaved)


class StageProgress:
    """Progress of one stage from its Step events.

    Rate = median seconds per step over the last `window` samples of the current segment. A sample is the
    printed `dt` when the line has one (upstream's dt covers only the optimiser step, so eval time is never
    in it), else the wall-clock gap between two step lines divided by the step difference — discarded when
    an eval/sample/checkpoint event arrived in between. The first `warmup_steps` steps after every (re)start
    are skipped (torch.compile, allocator warm-up).

    A restart (the step number goes back, or `mark_restart()`) starts a new segment: progress re-anchors at
    the resumed step, history is kept, and until the new segment has `min_samples` samples the previous
    segment's rate is used (a smaller batch after an OOM fallback changes the rate, so the new segment wins
    as soon as it can).
    """

    def __init__(self, name: str = "", total: Optional[int] = None, warmup_steps: int = 3, window: int = 50,
                 min_samples: int = 3, total_batch_size: Optional[int] = None):
        self.name = name
        self.total = total
        self.warmup_steps = warmup_steps
        self.min_samples = min_samples
        self.total_batch_size = total_batch_size
        self.step: Optional[int] = None
        self.last_t: Optional[float] = None
        self.first_t: Optional[float] = None
        self.restarts = 0
        self.history: list = []               # (t, step) of every step line, all segments
        self._samples: deque = deque(maxlen=window)
        self._previous_rate: Optional[float] = None
        self._seg_steps = 0                    # step lines seen in the current segment
        self._paused = False
        self._prev_step: Optional[int] = None
        self._prev_t: Optional[float] = None

    # ---------------------------------------------------------------- input
    def observe(self, event, t: float) -> None:
        """Feed one parsed event that arrived at wall-clock time t (seconds)."""
        if isinstance(event, Step):
            self._on_step(event, t)
        elif isinstance(event, _PAUSE_EVENTS):
            self._paused = True
        elif isinstance(event, ResumedFrom):
            self.mark_restart(t)
        elif isinstance(event, Config):
            if event.key == "num_iterations" and isinstance(event.value, int) and self.total is None:
                self.total = event.value
            elif event.key == "total_batch_size" and isinstance(event.value, dict):
                self.total_batch_size = event.value.get("total_batch_size") or self.total_batch_size

    def mark_restart(self, t: Optional[float] = None) -> None:
        """The stage process was restarted (resume, OOM fallback): start a new timing segment. A second mark
        before any step of the new segment (supervisor restart + the trainer's `Resuming ...` line) is one."""
        if self.step is None or self._seg_steps == 0:
            return
        if self._samples:
            self._previous_rate = median(self._samples)
        self._samples.clear()
        self._seg_steps = 0
        self._prev_step = self._prev_t = None
        self._paused = False
        self.restarts += 1

    def _on_step(self, ev: Step, t: float) -> None:
        if self.step is not None and ev.step <= self.step and self._seg_steps > 0:
            self.mark_restart(t)
        if ev.total is not None:
            self.total = ev.total
        if self.first_t is None:
            self.first_t = t
        self._seg_steps += 1
        sample = None
        if self._seg_steps > self.warmup_steps:
            if ev.dt_ms is not None and ev.dt_ms > 0:
                sample = ev.dt_ms / 1000.0
            elif (self._prev_step is not None and not self._paused and ev.step > self._prev_step
                  and t > self._prev_t):
                sample = (t - self._prev_t) / (ev.step - self._prev_step)
        if sample is not None:
            self._samples.append(sample)
        self._paused = False
        self._prev_step, self._prev_t = ev.step, t
        self.step, self.last_t = ev.step, t
        self.history.append((t, ev.step))

    # ---------------------------------------------------------------- output
    @property
    def sec_per_step(self) -> Optional[float]:
        if len(self._samples) >= self.min_samples or (self._samples and self._previous_rate is None):
            return median(self._samples)
        return self._previous_rate if self._previous_rate is not None else None

    @property
    def tokens_per_sec(self) -> Optional[float]:
        r = self.sec_per_step
        return self.total_batch_size / r if r and self.total_batch_size else None

    @property
    def fraction(self) -> Optional[float]:
        if self.step is None or not self.total:
            return None
        return min(1.0, (self.step + 1) / self.total)

    @property
    def remaining_steps(self) -> Optional[int]:
        if self.total is None:
            return None
        done = -1 if self.step is None else self.step
        return max(0, self.total - 1 - done)

    def eta_s(self, now: Optional[float] = None) -> Optional[float]:
        """Seconds of training left; with `now`, time since the last step line is taken off (not below 0)."""
        rate, left = self.sec_per_step, self.remaining_steps
        if rate is None or left is None:
            return None
        eta = left * rate
        if now is not None and self.last_t is not None and left > 0:
            eta = max(0.0, eta - max(0.0, now - self.last_t))
        return eta


@dataclass(frozen=True)
class StageEstimate:
    name: str
    state: str                   # "pending" | "running" | "done" | "failed"
    eta_s: Optional[float]       # seconds left; 0 for done; None = unknown
    basis: str                   # "measured" | "scaled" | "hint" | "done" | "unknown"


@dataclass(frozen=True)
class PipelineEstimate:
    stages: tuple
    known_s: float               # sum of the known estimates
    unknown: tuple               # names of unfinished stages without an estimate

    @property
    def total_s(self) -> Optional[float]:
        """Seconds to the end of the pipeline, or None when some stage is unknown."""
        return None if self.unknown else self.known_s


def _get(stage, key, default=None):
    if isinstance(stage, Mapping):
        return stage.get(key, default)
    return getattr(stage, key, default)


class PipelineProgress:
    """Progress over a plan's stages (Stage objects or their dicts). A not-yet-started training stage is
    estimated as num_iterations x total_batch_size x (seconds per token measured on the last training
    stage); other unstarted stages use `hints` (seconds, e.g. from an earlier run) or are "unknown"."""

    def __init__(self, stages: Sequence[Union[Mapping, object]], hints: Optional[Mapping] = None,
                 warmup_steps: int = 3, window: int = 50):
        self._specs = {_get(s, "name"): s for s in stages}
        self.order = [_get(s, "name") for s in stages]
        self.hints = dict(hints or {})
        self.state = {n: "pending" for n in self.order}
        self.progress = {n: StageProgress(n, total=_get(self._specs[n], "num_iterations"),
                                          warmup_steps=warmup_steps, window=window,
                                          total_batch_size=_get(self._specs[n], "total_batch_size"))
                         for n in self.order}
        self._sec_per_token: Optional[float] = None

    def start_stage(self, name: str, t: float) -> None:
        """A stage (attempt) started; a second start of the same stage is a restart."""
        if self.state[name] in ("running", "failed") and self.progress[name].step is not None:
            self.progress[name].mark_restart(t)
        self.state[name] = "running"

    def finish_stage(self, name: str, t: float, ok: bool = True) -> None:
        self.state[name] = "done" if ok else "failed"
        self._learn_rate(name)

    def mark_done(self, name: str) -> None:
        """A stage found complete before this run (stages_done)."""
        self.state[name] = "done"

    def observe(self, name: str, event, t: float) -> None:
        self.progress[name].observe(event, t)
        if isinstance(event, Step):
            self._learn_rate(name)

    def _learn_rate(self, name: str) -> None:
        p = self.progress[name]
        r = p.sec_per_step
        if r and p.total_batch_size and p.step is not None and p.step >= p.warmup_steps:
            self._sec_per_token = r / p.total_batch_size

    def stage_estimate(self, name: str, now: Optional[float] = None) -> StageEstimate:
        st = self.state[name]
        if st == "done":
            return StageEstimate(name, st, 0.0, "done")
        p = self.progress[name]
        if st == "running":
            eta = p.eta_s(now)
            if eta is not None:
                return StageEstimate(name, st, eta, "measured")
        spec = self._specs[name]
        iters = p.total if p.total is not None else _get(spec, "num_iterations")
        tbs = p.total_batch_size or _get(spec, "total_batch_size")
        if _get(spec, "trains") and iters and tbs and self._sec_per_token:
            left = p.remaining_steps if (st == "running" and p.remaining_steps is not None) else iters
            return StageEstimate(name, st, left * tbs * self._sec_per_token, "scaled")
        if st == "pending" and name in self.hints:
            return StageEstimate(name, st, float(self.hints[name]), "hint")
        return StageEstimate(name, st, None, "unknown")

    def estimate(self, now: Optional[float] = None) -> PipelineEstimate:
        ests = tuple(self.stage_estimate(n, now) for n in self.order)
        known = sum(e.eta_s for e in ests if e.eta_s is not None)
        unknown = tuple(e.name for e in ests if e.eta_s is None and e.state != "failed")
        return PipelineEstimate(ests, known, unknown)
