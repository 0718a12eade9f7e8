"""Published upstream peak-memory figures the VRAM predictor is fitted on, and its prediction for each."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .vram import GIB, Assumptions, ModelShape, accumulation, allocated_bytes, device_bytes, training_terms

__all__ = ["PublishedPeak", "PUBLISHED", "TOLERANCE", "predict", "table_rows", "format_table"]

TOLERANCE = 0.15   # every cited max_memory_allocated point must be predicted within ±15 %


@dataclass(frozen=True)
class PublishedPeak:
    """One published run of upstream nanochat's 2025-10/11 architecture (the one nanochat/ here replicates:
    vocab 65,536, width 64·depth, heads of 128, no value embeddings or sliding windows), base_train, compiled."""
    label: str
    source: str            # where the figure is published
    gpu: str
    depth: int
    seq_len: int
    device_bs: int
    world_size: int
    total_batch_size: int
    measured_mib: float    # the report's "Peak memory usage" (torch.cuda.max_memory_allocated), or see `kind`
    kind: str = "allocated"   # "allocated": max_memory_allocated; "reserved": an nvidia-smi reading (informative)
    vocab_size: int = 65536
    note: str = ""


PUBLISHED = (
    PublishedPeak(
        "d20 speedrun, 8xH100", "https://github.com/mileswangs/mychat/blob/c88d170ecef487f63595ff7e00cf545f65d7888b/"
        "report/base-model-training.md", "8x H100 80GB", 20, 2048, 32, 8, 524288, 75422.02,
        note="the same figure (75422.02 MiB) appears in several independent speedrun reports of Oct-Dec 2025"),
    PublishedPeak(
        "d20, one RTX 5090", "report.md of a public nanochat fork, run `rtx5090-bs-8` (nanochat dd6ff9a, PyTorch "
        "2.8.0, 2025-10-17); found through the code index, repository name not resolved", "1x RTX 5090", 20, 2048, 8,
        1, 524288, 29596.27, note="32 micro-steps per step: the only cited point with gradient accumulation"),
    PublishedPeak(
        "d8, 8xH100", "https://github.com/HarleyCoops/nanochatAquaRat/blob/a991cb9fc9b10dabdfd62f2e55a658e6faa8eeaa/"
        "hyperbolic_training_report.md", "8x H100 80GB", 8, 2048, 32, 8, 524288, 19176.26,
        note="logits are 45 % of this peak: it pins the logits term"),
    PublishedPeak(
        "d32 run1000, 8xH100", "https://github.com/karpathy/nanochat/blob/master/run1000.sh (2025-10 comment: B=16 "
        "runs out of memory, B=8 shows about 78/80 GB in nvidia-smi)", "8x H100 80GB", 32, 2048, 8, 8, 524288,
        78 * 1000 * 1000 * 1000 / 2**20, kind="reserved",
        note="an approximate nvidia-smi reading (process total, NCCL included), compared with the reserved total"),
)


def predict(p: PublishedPeak, a: Optional[Assumptions] = None) -> float:
    """The predictor's figure for `p` in MiB: allocated bytes for an `allocated` point, the reserved total
    (slack + CUDA context) for a `reserved` one."""
    from dataclasses import replace
    a = replace(a or Assumptions(), compiled=True, cuda=True, world_size=p.world_size)
    shape = ModelShape(p.depth, p.vocab_size, p.seq_len)
    terms = training_terms(shape, p.device_bs, a, accumulation(p.total_batch_size, p.device_bs, p.seq_len,
                                                               p.world_size))
    b = allocated_bytes(terms) if p.kind == "allocated" else device_bytes(terms, a)
    return b / 2**20


def table_rows(a: Optional[Assumptions] = None) -> list:
    """[(PublishedPeak, predicted MiB, predicted/measured)] for every cited point."""
    out = []
    for p in PUBLISHED:
        pred = predict(p, a)
        out.append((p, pred, pred / p.measured_mib))
    return out


def format_table(a: Optional[Assumptions] = None) -> list:
    """The markdown rows of docs/VRAM_CALIBRATION.md's table (the test compares the document with these)."""
    lines = ["| run | config (depth, T, B x ranks, vocab, compile) | GPU | measured GiB | predicted GiB | ratio | kind |",
             "|-----|-----|-----|-----:|-----:|-----:|-----|"]
    for p, pred, ratio in table_rows(a):
        cfg = f"d{p.depth}, T={p.seq_len}, B={p.device_bs} x {p.world_size}, vocab {p.vocab_size:,}, compiled"
        lines.append(f"| {p.label} | {cfg} | {p.gpu} | {p.measured_mib * 2**20 / GIB:.2f} | "
                     f"{pred * 2**20 / GIB:.2f} | {ratio:.3f} | {p.kind} |")
    return lines
