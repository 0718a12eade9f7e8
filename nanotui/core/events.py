"""Typed, immutable events parsed from training-stage log lines (docs/CONTRACTS.md "Log lines")."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Union

__all__ = [
    "Step", "ValBpb", "CoreMetric", "ValLoss", "StepMetrics", "Config", "CheckpointSaved", "Oom",
    "Sample", "EndOfRun", "Error", "EvalResult", "EvalProgress", "ResumedFrom", "StopRequested", "Raw", "Event",
    "BatchProbe", "BatchChoice", "WandbInfo",
    "STEP_KINDS", "new_step",
]

STEP_KINDS = ("base", "mid", "sft")


@dataclass(frozen=True, slots=True)
class Step:
    """One optimiser step line (base/mid `step 00123/21400 ...`, sft `Step 00010/00701 | Training loss ...`).

    `tok_per_sec` is tokens/s of the whole world per optimiser step. Upstream before 2025-10-27
    (karpathy/nanochat PR #175) printed micro-batch tokens / step time, i.e. too small by the gradient
    accumulation factor; `LogParser` recomputes it from `Total batch size` and `dt` when it knows them and
    keeps the printed number in `tok_per_sec_printed`.
    """
    kind: str                      # "base" | "mid" | "sft"
    step: int
    total: Optional[int]           # None when the line has no "/total" (upstream mid_train)
    loss: float
    lrm: Optional[float] = None
    dt_ms: Optional[float] = None
    tok_per_sec: Optional[float] = None
    mfu: Optional[float] = None    # percent; None for "n/a" or absent
    total_time_min: Optional[float] = None
    eta_min: Optional[float] = None
    epoch: Optional[int] = None
    bf16: bool = False             # the MFU field was spelled "bf16_mfu" (upstream 2026)
    num_tokens: Optional[int] = None   # sft: supervised tokens in this step
    pct: Optional[float] = None
    tok_per_sec_printed: Optional[float] = None


@dataclass(frozen=True, slots=True)
class ValBpb:
    step: int
    bpb: float


@dataclass(frozen=True, slots=True)
class CoreMetric:
    step: Optional[int]            # None for a standalone base_eval "CORE metric: 0.2219"
    value: float


@dataclass(frozen=True, slots=True)
class ValLoss:
    step: int
    loss: float


@dataclass(frozen=True, slots=True)
class StepMetrics:
    """`Step 00100 | mmlu_acc: 0.3125, arc_easy_acc: 0.4375` (upstream chat_sft in-training evals)."""
    step: int
    values: dict


@dataclass(frozen=True, slots=True)
class Config:
    """A startup line. Keys: vocab_size, num_params, micro_batch ({device_bs, seq_len, tokens}),
    total_batch_size ({total_batch_size, grad_accum}), num_iterations, device_type, model_config (dict),
    and upstream's plain `name: value` model lines (num_layers, model_dim, num_heads, num_kv_heads)."""
    key: str
    value: Any


@dataclass(frozen=True, slots=True)
class CheckpointSaved:
    step: int
    path: str
    source: str = "ours"           # "ours" (`Checkpoint saved: ...`) | "upstream" (`Saved model parameters to: ...`)


@dataclass(frozen=True, slots=True)
class Oom:
    device_bs: Optional[int]
    step: Optional[int]
    emergency_step: Optional[int] = None
    source: str = "ours"           # "ours" (`OOM: ...` line) | "traceback"
    text: str = ""


@dataclass(frozen=True, slots=True)
class Sample:
    text: str


@dataclass(frozen=True, slots=True)
class EndOfRun:
    """key: "peak_mem_mib" | "total_time_min" | "min_val_bpb"."""
    key: str
    value: float


@dataclass(frozen=True, slots=True)
class Error:
    """The summary line of a Python traceback, e.g. `AssertionError: total_batch_size ...`."""
    exc_type: str
    message: str


@dataclass(frozen=True, slots=True)
class EvalResult:
    """A task score: chat_eval `ARC-Easy accuracy: 45.67%` (value 0.4567), `ChatCORE metric: 0.2345`,
    base_eval `Evaluating: hellaswag (10-shot, ...)... accuracy: 0.3100 | centered: 0.0800 | time: 2.11s`."""
    task: str
    value: float                   # a fraction in [0, 1] for accuracies
    centered: Optional[float] = None
    step: Optional[int] = None


@dataclass(frozen=True, slots=True)
class EvalProgress:
    """Running evaluation counters: `Rank 0 | 12/100 (12.00%)` redraws and `Final: 40/100 (40.00%)`."""
    done: int
    total: int
    final: bool = False


@dataclass(frozen=True, slots=True)
class ResumedFrom:
    """`Resuming optimization from step 120 ...`: the stage continues from a checkpoint."""
    step: int


@dataclass(frozen=True, slots=True)
class StopRequested:
    """Ours: `Stopped on request (SIGTERM) at step 123; checkpoint: step 000123` before exit code 4."""
    step: int
    signal: str
    ckpt_step: Optional[int] = None


@dataclass(frozen=True, slots=True)
class BatchProbe:
    """Ours (`--device_batch_size=auto`): `Device batch probe: device_batch_size=8 peak=14.20GiB reserved=15.00GiB
    limit=21.59GiB -> fits` (outcome fits | too big | OOM; peaks None after an OOM)."""
    device_bs: int
    peak_gib: Optional[float]
    reserved_gib: Optional[float]
    limit_gib: Optional[float]
    outcome: str


@dataclass(frozen=True, slots=True)
class BatchChoice:
    """Ours: `Device batch size auto: 8 (headroom 10%, ...)` (kind "train") or `Eval batch size auto: 4 (...)`
    (kind "eval"); device_bs None when nothing fits. `detail` is the parenthesised text."""
    kind: str
    device_bs: Optional[int]
    headroom: Optional[float] = None
    limit_gib: Optional[float] = None
    capacity_gib: Optional[float] = None
    detail: str = ""


@dataclass(frozen=True, slots=True)
class WandbInfo:
    """W&B at a stage's start (core/wandbinfo.py): ours `W&B run: NAME (id ID)`, `W&B run URL: URL`,
    `W&B logging disabled: WHY` (error set); wandb's own `wandb: ... View run [NAME] at[:] URL` (upstream too)."""
    name: Optional[str] = None
    run_id: Optional[str] = None
    url: Optional[str] = None
    error: Optional[str] = None


@dataclass(frozen=True, slots=True)
class Raw:
    """A line no rule recognised (only emitted by `LogParser(emit_raw=True)`), ANSI already stripped."""
    text: str


Event = Union[Step, ValBpb, CoreMetric, ValLoss, StepMetrics, Config, CheckpointSaved, Oom, Sample,
              EndOfRun, Error, EvalResult, EvalProgress, ResumedFrom, StopRequested, BatchProbe, BatchChoice, WandbInfo,
              Raw]


class _StepBuilder:
    """Mutable twin of `Step` with the same slot layout, used by the parser's hot path: a frozen dataclass's
    __init__ costs ~1.4 us (one object.__setattr__ per field); building the twin and switching its class
    costs ~0.3 us, and the result is an ordinary, frozen `Step` (equality, hash and immutability included).
    tests/unit/test_core_events.py checks the two layouts stay identical."""
    __slots__ = Step.__slots__

    def __init__(self, kind, step, total, loss, lrm, dt_ms, tok_per_sec, mfu, total_time_min, eta_min, epoch,
                 bf16, num_tokens, pct, tok_per_sec_printed):
        self.kind = kind
        self.step = step
        self.total = total
        self.loss = loss
        self.lrm = lrm
        self.dt_ms = dt_ms
        self.tok_per_sec = tok_per_sec
        self.mfu = mfu
        self.total_time_min = total_time_min
        self.eta_min = eta_min
        self.epoch = epoch
        self.bf16 = bf16
        self.num_tokens = num_tokens
        self.pct = pct
        self.tok_per_sec_printed = tok_per_sec_printed


def new_step(kind, step, total, loss, lrm, dt_ms, tok_per_sec, mfu, total_time_min, eta_min, epoch, bf16,
             num_tokens, pct, tok_per_sec_printed) -> Step:
    """Fast positional constructor for `Step` (all fields, in declaration order)."""
    obj = _StepBuilder(kind, step, total, loss, lrm, dt_ms, tok_per_sec, mfu, total_time_min, eta_min, epoch,
                       bf16, num_tokens, pct, tok_per_sec_printed)
    obj.__class__ = Step
    return obj
