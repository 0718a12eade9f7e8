"""VRAM predictor: peak device memory of a training step and of the evaluation passes, per DEVICE_BS, for a GPU."""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Optional

__all__ = [
    "GIB", "GpuSpec", "GPUS", "gpu_spec", "ModelShape", "Assumptions", "DEFAULT_HEADROOM",
    "param_counts", "training_terms", "eval_terms", "allocated_bytes", "device_bytes", "accumulation", "candidates",
    "StageVram", "VramRow",
    "plan_stage", "format_stage", "shape_key",
]

GIB = 2**30
DEFAULT_HEADROOM = 0.10      # fraction of the card left free by the chosen DEVICE_BS
HEAD_DIM = 128               # nanochat's depth-sized models: width 64·depth, heads of 128 (at least one)
DIM_PER_LAYER = 64
ROTARY_LENGTH_FACTOR = 10    # the rotary tables cover 10 x sequence_len positions
CORE_ROWS = 8                # rows of one CORE example (one per choice/continuation), worst case assumed


@dataclass(frozen=True)
class GpuSpec:
    name: str
    capacity_gib: float       # what the card offers to one process (nvidia-smi total)


# nvidia-smi totals in GiB (the "24 GB" 4090 reports 24564 MiB)
GPUS = {
    "4090": GpuSpec("RTX 4090", 23.99), "3090": GpuSpec("RTX 3090", 24.0), "4080": GpuSpec("RTX 4080", 16.0),
    "5090": GpuSpec("RTX 5090", 31.84), "a10": GpuSpec("A10", 22.49), "l4": GpuSpec("L4", 22.49),
    "a100-40": GpuSpec("A100 40GB", 39.39), "a100": GpuSpec("A100 80GB", 79.25), "h100": GpuSpec("H100 80GB", 79.65),
    "h200": GpuSpec("H200", 139.8), "l40s": GpuSpec("L40S", 44.99),
}
_ALIASES = [  # (regex on a lower-cased device name, key) — most specific first
    (r"a100.*40", "a100-40"), (r"a100", "a100"), (r"h200", "h200"), (r"h100", "h100"), (r"5090", "5090"),
    (r"4090", "4090"), (r"4080", "4080"), (r"3090", "3090"), (r"l40s", "l40s"), (r"\bl4\b", "l4"), (r"\ba10\b", "a10"),
]


def gpu_spec(name: str, capacity_gib: Optional[float] = None) -> GpuSpec:
    """A GPU by short name (`4090`, `h100`), by the driver's device name (`NVIDIA GeForce RTX 4090`), or by size
    (`24`, `24GiB`, `80G`). `capacity_gib` (e.g. NVML's mem_total of the detected card) wins over the table.
    ValueError with a one-line message for anything else."""
    text = str(name or "").strip()
    low = text.lower()
    if low in GPUS:
        spec = GPUS[low]
        return GpuSpec(spec.name, capacity_gib) if capacity_gib else spec
    m = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)\s*(gib|gb|g)?", low)
    if m:
        size = float(m.group(1))
        if size <= 0:
            raise ValueError(f"GPU memory must be positive, got {text!r}")
        return GpuSpec(f"{size:g} GiB GPU", capacity_gib or size)
    key = low if low in GPUS else next((k for rx, k in _ALIASES if re.search(rx, low)), None)
    if key is None:
        if capacity_gib:
            return GpuSpec(text, capacity_gib)
        raise ValueError(f"unknown GPU {text!r}; use one of {', '.join(GPUS)} or a size in GiB such as 24")
    spec = GPUS[key]
    return GpuSpec(spec.name, capacity_gib) if capacity_gib else spec


@dataclass(frozen=True)
class ModelShape:
    """What memory depends on: the depth-sized GPT (n_embd = 64·depth, n_head = max(1, n_embd // 128))."""
    depth: int
    vocab_size: int = 65536
    seq_len: int = 2048

    @property
    def n_embd(self) -> int:
        return DIM_PER_LAYER * self.depth

    @property
    def n_head(self) -> int:
        return max(1, self.n_embd // HEAD_DIM)

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def tag(self) -> str:
        return f"d{self.depth}"


@dataclass(frozen=True)
class Assumptions:
    """The memory model's terms; each is fitted or argued in docs/VRAM_CALIBRATION.md (published upstream peaks)
    and summed up in docs/device-batch-size.md.

    cuda: bf16 autocast, bf16 token embedding, fp32 master weights elsewhere (off: everything fp32, as on CPU).
    compiled: torch.compile'd training forward (base/mid); SFT trains eagerly (variable shapes).
    act_values_per_layer: values per token and layer that autograd saves in eager mode (19·n_embd: attention input,
      its norm, q/k before and after QK-norm, v, the attention output and its contiguous copy; MLP input, its norm,
      the 4·n_embd ReLU output and its square's input shared = 10·n_embd), at the activation dtype.
    compile_act_factor: what torch.compile keeps of that; fitted at 1.0 on the d20 B=32 H100 peak, where the
      activations are 80 % of the total (it fused pointwise ops but keeps about as much as eager would).
    logit_bytes_*: bytes per [B, T, vocab] element alive at the peak. Compiled training holds the logits as one
      bf16 buffer that its gradient reuses (2; fitted on the d8 B=32 peak, where logits are 45 % of the total);
      eager training keeps tanh and log-softmax outputs and, in backward, two gradients (four fp32 copies, 16); an
      eager no-grad evaluation holds logits, logits/15 and tanh at once (three fp32 copies, 12).
    grad_sets_accumulating: gradient-sized buffers alive at the peak of a micro-step that accumulates into existing
      .grad (gradient accumulation > 1): the fp32 .grad itself, the compiled backward's fresh fp32 gradients, which
      it hands back all at once, and their bf16 matmul outputs (0.5). Fitted on the single-card d20 B=8 peak.
      The first micro-step of a step starts with no .grad (zero_grad sets None) and peaks before they exist.
    allocator_slack: reserved/allocated of PyTorch's caching allocator at the peak (expandable segments on).
    context_gib: CUDA context, cuBLAS/cuDNN workspaces, NCCL buffers: device memory PyTorch does not count.
    """
    cuda: bool = True
    compiled: bool = True
    act_values_per_layer: float = 19.0
    compile_act_factor: float = 1.0
    backward_transient_values: float = 10.0
    logit_bytes_train_compiled: float = 2.0
    logit_bytes_train_eager: float = 16.0
    logit_bytes_eval: float = 12.0
    grad_sets_accumulating: float = 2.5
    grad_sets_accumulating_eager: float = 1.0
    allocator_slack: float = 0.05
    context_gib: float = 0.6
    world_size: int = 1

    @property
    def act_bytes(self) -> int:
        return 2 if self.cuda else 4


def param_counts(shape: ModelShape) -> dict:
    """Parameter counts: wte and lm_head (vocab x n_embd each), the block matrices (12·n_embd² per layer)."""
    d, v = shape.n_embd, shape.vocab_size
    counts = {"wte": v * d, "lm_head": v * d, "matrices": 12 * shape.depth * d * d}
    counts["total"] = counts["wte"] + counts["lm_head"] + counts["matrices"]
    return counts


def _state_terms(shape: ModelShape, a: Assumptions) -> dict:
    """Bytes that live through the whole step: weights, gradients, optimizer state."""
    p = param_counts(shape)
    wte_bytes = 2 if a.cuda else 4                  # the embedding is bf16 on CUDA
    weights = wte_bytes * p["wte"] + 4 * p["lm_head"] + 4 * p["matrices"]
    rotary = 2 * (ROTARY_LENGTH_FACTOR * shape.seq_len * shape.head_dim // 2) * (2 if a.cuda else 4)
    world = max(1, int(a.world_size))
    adamw = 2 * (wte_bytes * p["wte"] + 4 * p["lm_head"]) // world    # exp_avg + exp_avg_sq, param dtype
    muon = 4 * p["matrices"] // world                                  # one fp32 momentum buffer per matrix
    return {"weights": weights + rotary, "grads": weights, "adamw": adamw, "muon": muon}


def training_terms(shape: ModelShape, device_bs: int, a: Assumptions = Assumptions(),
                   grad_accum: Optional[int] = None) -> dict:
    """Bytes of each term at the peak of a training micro-step: the start of its backward (activations and logits
    alive). `grad_accum` is the number of micro-steps per optimizer step (None: assume more than one, the larger
    case): with one, no .grad exists yet at that peak, and the only gradient memory that can top it is the end of
    the backward (fresh gradients plus their bf16 halves, activations gone)."""
    tokens = device_bs * shape.seq_len
    d = shape.n_embd
    terms = _state_terms(shape, a)
    grads = terms["grads"]
    values = a.act_values_per_layer * (a.compile_act_factor if a.compiled else 1.0)
    terms["activations"] = int(tokens * shape.depth * (values * d + 2) * a.act_bytes)  # + fp32 rstd of the norms
    terms["activations"] += int(tokens * 3 * d * a.act_bytes)                         # final norm, lm_head input
    per_logit = a.logit_bytes_train_compiled if a.compiled else a.logit_bytes_train_eager
    if not a.cuda:
        per_logit = max(per_logit, 4.0)                                               # fp32 logits on a CPU
    terms["logits"] = int(tokens * shape.vocab_size * per_logit)
    terms["backward_transient"] = int(tokens * a.backward_transient_values * d * a.act_bytes)
    if grad_accum is None or grad_accum > 1:
        terms["grads"] = int(grads * (a.grad_sets_accumulating if a.compiled else a.grad_sets_accumulating_eager))
    else:
        token_part = terms["activations"] + terms["logits"] + terms["backward_transient"]
        terms["grads"] = max(0, int(1.5 * grads) - token_part)
    return terms


def accumulation(total_batch_size: int, device_bs: int, seq_len: int, world_size: int = 1) -> Optional[int]:
    """Micro-steps per optimizer step at `device_bs` (pass seq_len=1 when the total counts sequences), None when
    the batch does not divide the total."""
    unit = device_bs * seq_len * max(1, world_size)
    return total_batch_size // unit if unit > 0 and total_batch_size % unit == 0 else None


def eval_terms(shape: ModelShape, rows: int, a: Assumptions = Assumptions(), seq_len: Optional[int] = None) -> dict:
    """Bytes at the peak of a no-grad evaluation forward of `rows` sequences (eager model, optimizer state kept,
    gradients freed): val bpb at the eval batch, a CORE example (CORE_ROWS rows), sampling (1 row)."""
    t = seq_len or shape.seq_len
    tokens = rows * t
    terms = _state_terms(shape, a)
    del terms["grads"]
    terms["layer_transient"] = int(tokens * 8 * shape.n_embd * a.act_bytes)  # residual, norm, 4·d MLP hidden, ...
    terms["logits"] = int(tokens * shape.vocab_size * a.logit_bytes_eval)
    return terms


def allocated_bytes(terms: dict) -> int:
    """What torch.cuda.max_memory_allocated would read at this peak: the sum of the terms."""
    return int(sum(terms.values()))


def device_bytes(terms: dict, a: Assumptions = Assumptions()) -> int:
    """Device memory a process needs for these terms: allocator slack on top, plus the CUDA context."""
    return int(allocated_bytes(terms) * (1 + a.allocator_slack) + a.context_gib * GIB)


def candidates(total_batch_size: int, seq_len: int, world_size: int = 1, limit: Optional[int] = None) -> list:
    """Powers of two B (largest first) with B·seq_len·world_size dividing total_batch_size (in tokens; pass
    seq_len=1 when the total counts sequences, as SFT's examples per step), at most `limit` when given."""
    unit = seq_len * world_size
    if total_batch_size <= 0 or unit <= 0 or total_batch_size % unit:
        return []
    per_rank = total_batch_size // unit
    out, b = [], 1
    while b <= per_rank:
        if per_rank % b == 0 and (limit is None or b <= limit):
            out.append(b)
        b *= 2
    return out[::-1]


@dataclass(frozen=True)
class VramRow:
    device_bs: int
    train_bytes: int
    eval_bytes: int          # val bpb at this batch
    fits: bool               # training fits with the headroom
    eval_fits: bool
    train_allocated: int = 0  # the training peak as torch.cuda.max_memory_allocated reads it (no slack, no context)

    @property
    def train_gib(self) -> float:
        return self.train_bytes / GIB

    @property
    def eval_gib(self) -> float:
        return self.eval_bytes / GIB

    @property
    def allocated_gib(self) -> float:
        return self.train_allocated / GIB


@dataclass(frozen=True)
class StageVram:
    stage: str
    shape: ModelShape
    gpu: GpuSpec
    headroom: float
    rows: tuple                       # VramRow, largest batch first
    chosen: Optional[int]             # largest training batch that fits (None: none fits)
    eval_bs: Optional[int]            # batch for val bpb (== chosen unless evaluation needs less)
    core_bytes: int                   # one CORE example (CORE_ROWS rows at seq_len)
    sample_bytes: int                 # sampling: one row
    compiled: bool = True
    world_size: int = 1
    notes: tuple = field(default_factory=tuple)

    @property
    def limit_bytes(self) -> int:
        return int(self.gpu.capacity_gib * (1 - self.headroom) * GIB)

    def row(self, device_bs: int) -> Optional[VramRow]:
        return next((r for r in self.rows if r.device_bs == device_bs), None)

    def to_dict(self) -> dict:
        return {"stage": self.stage, "model": self.shape.tag, "vocab_size": self.shape.vocab_size,
                "seq_len": self.shape.seq_len, "gpu": self.gpu.name, "capacity_gib": self.gpu.capacity_gib,
                "headroom": self.headroom, "chosen": self.chosen, "eval_bs": self.eval_bs,
                "rows": [{"device_bs": r.device_bs, "train_gib": round(r.train_gib, 2),
                          "allocated_gib": round(r.allocated_gib, 2),
                          "eval_gib": round(r.eval_gib, 2), "fits": r.fits, "eval_fits": r.eval_fits}
                         for r in self.rows],
                "core_gib": round(self.core_bytes / GIB, 2), "sample_gib": round(self.sample_bytes / GIB, 2),
                "notes": list(self.notes)}


def plan_stage(stage: str, shape: ModelShape, total_batch_size: int, gpu: GpuSpec, *, world_size: int = 1,
               headroom: float = DEFAULT_HEADROOM, compiled: bool = True, sequences: bool = False,
               assumptions: Assumptions = Assumptions(), keep: tuple = ()) -> StageVram:
    """The DEVICE_BS table of one training stage. `total_batch_size` is in tokens (all ranks), or in sequences
    when `sequences` (SFT). The chosen batch is the largest candidate whose training peak fits in
    capacity·(1 − headroom); the eval batch is the largest candidate <= chosen whose val-bpb pass fits."""
    if not 0 <= headroom < 1:
        raise ValueError(f"headroom must be in [0, 1), got {headroom}")
    a = replace(assumptions, compiled=compiled, world_size=world_size)
    limit = gpu.capacity_gib * (1 - headroom) * GIB
    cands = candidates(total_batch_size, 1 if sequences else shape.seq_len, world_size)
    rows = []
    for b in cands:
        terms = training_terms(shape, b, a, accumulation(total_batch_size, b, 1 if sequences else shape.seq_len,
                                                         world_size))
        tb = device_bytes(terms, a)
        eb = device_bytes(eval_terms(shape, b, a), a)
        rows.append(VramRow(b, tb, eb, tb <= limit, eb <= limit, allocated_bytes(terms)))
    too_big = [r for r in rows if not r.fits]
    rows = [r for r in rows if r in too_big[-2:] or r.fits or r.device_bs in keep]  # + `keep`: a batch asked for
    chosen = next((r.device_bs for r in rows if r.fits), None)
    eval_bs = None
    notes = []
    if chosen is not None:
        eval_bs = next((r.device_bs for r in rows if r.device_bs <= chosen and r.eval_fits), None)
        if eval_bs is not None and eval_bs < chosen:
            notes.append(f"evaluation needs a smaller batch: val bpb at {eval_bs} (training at {chosen})")
    core = device_bytes(eval_terms(shape, CORE_ROWS, a), a)
    sample = device_bytes(eval_terms(shape, 1, a), a)
    if core > limit:
        notes.append(f"a CORE example ({CORE_ROWS} rows x {shape.seq_len}) may not fit: {core / GIB:.1f} GiB")
    return StageVram(stage, shape, gpu, headroom, tuple(rows), chosen, eval_bs, core, sample, compiled,
                     world_size, tuple(notes))


def shape_key(model_tag: Optional[str], seq_len: Optional[int], world_size: int, kind: str = "tokens") -> str:
    """Stages with the same key measure the same memory per device batch (mid_train reuses base_train's probe)."""
    return f"{model_tag}/T{seq_len}/W{world_size}/{kind}"


def format_stage(sv: StageVram, measured: Optional[dict] = None) -> list:
    """Text lines: header, one row per DEVICE_BS (`*` = chosen), evaluation lines. `measured` maps device_bs to
    a probe row dict ({peak_gib, reserved_gib, outcome}) shown beside the prediction."""
    s = sv.shape
    ranks = f" x {sv.world_size} ranks" if sv.world_size > 1 else ""
    lines = [f"{sv.stage}: {s.tag} (n_embd {s.n_embd}, {s.n_head} heads, vocab {s.vocab_size:,}), T={s.seq_len}"
             f"{ranks}, {'compiled' if sv.compiled else 'eager'}; {sv.gpu.name} {sv.gpu.capacity_gib:.1f} GiB, "
             f"limit {sv.limit_bytes / GIB:.1f} GiB (headroom {sv.headroom:.0%})",
             f"  {'DEVICE_BS':>9}  {'train GiB':>9}  {'val GiB':>8}  fit" + ("  measured" if measured else "")]
    for r in sv.rows:
        mark = "*" if r.device_bs == sv.chosen else " "
        fit = "yes" if r.fits else "no "
        extra = ""
        if measured and r.device_bs in measured:
            m = measured[r.device_bs]
            peak = m.get("reserved_gib") or m.get("peak_gib")
            extra = f"  {peak:.1f} GiB {m.get('outcome', '')}" if peak is not None else f"  {m.get('outcome', '')}"
        lines.append(f"{mark} {r.device_bs:>9}  {r.train_gib:>9.1f}  {r.eval_gib:>8.1f}  {fit}{extra}")
    if sv.chosen is None:
        lines.append("  nothing fits: use a smaller model (--depth), a shorter SEQ_LEN or a bigger GPU")
    else:
        ev = sv.eval_bs if sv.eval_bs is not None else "none fits"
        lines.append(f"  chosen DEVICE_BS={sv.chosen}; eval batch {ev}; CORE example {sv.core_bytes / GIB:.1f} GiB, "
                     f"sampling {sv.sample_bytes / GIB:.1f} GiB")
    lines += [f"  note: {n}" for n in sv.notes]
    return lines
