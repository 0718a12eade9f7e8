"""The VRAM plan of a pipeline: the predictor's DEVICE_BS table for each training stage of a profile's plan."""
from __future__ import annotations

from typing import Optional

from .plan import flag_value
from .vram import DEFAULT_HEADROOM, GpuSpec, ModelShape, StageVram, format_stage, gpu_spec, plan_stage

__all__ = ["PROFILE_GPU", "stage_shapes", "plan_vram", "format_plan", "choose_gpu", "predicted_peak", "format_probes",
           "expected_peak"]

PROFILE_GPU = {"4090": "4090", "8xh100": "h100"}   # the card a profile is written for
DEFAULT_VOCAB = 65536      # tok_train's default
DEFAULT_DEPTH = 20         # base_train's default
SFT_SEQ_LEN = 2048         # chat_sft's --max_seq_len default: conversations are padded up to it (worst case)
SFT_EXAMPLES = 32          # chat_sft's --target_examples_per_step default


def _int_flag(argv, name, default):
    value = flag_value(list(argv), name)
    return int(value) if value is not None and value.strip().isdigit() else default


def stage_shapes(plan: dict, depth: Optional[int] = None, vocab_size: Optional[int] = None) -> list:
    """[(stage dict, ModelShape, total, sequences, compiled)] for the plan's training stages. The model is the one
    base_train builds (`--depth`, vocab from tok_train's `--vocab_size`); mid/SFT fine-tune that same model.
    `depth`/`vocab_size` (nanotui plan --depth/--vocab-size) replace what the plan says."""
    stages = plan.get("stages") or []
    depth_override, vocab_override = depth, vocab_size
    vocab, depth = DEFAULT_VOCAB, DEFAULT_DEPTH
    for s in stages:
        if s.get("name") == "tok_train":
            vocab = _int_flag(s["argv"], "vocab_size", vocab)
        if s.get("name") == "base_train" or (s.get("trains") and flag_value(list(s["argv"]), "depth")):
            depth = _int_flag(s["argv"], "depth", depth)
    depth, vocab = depth_override or depth, vocab_override or vocab
    out = []
    for s in stages:
        if not s.get("trains"):
            continue
        argv = s["argv"]
        if s.get("log_kind") == "sft":
            seq = _int_flag(argv, "max_seq_len", SFT_SEQ_LEN)
            total = _int_flag(argv, "target_examples_per_step", SFT_EXAMPLES)
            out.append((s, ModelShape(depth, vocab, seq), total, True, False))
        else:
            seq = s.get("seq_len") or _int_flag(argv, "max_seq_len", 2048)
            total = s.get("total_batch_size") or _int_flag(argv, "total_batch_size", 524288)
            out.append((s, ModelShape(depth, vocab, seq), total, False, True))
    return out


def plan_vram(plan: dict, gpu: GpuSpec, headroom: float = DEFAULT_HEADROOM, depth: Optional[int] = None,
              vocab_size: Optional[int] = None, keep_chosen: bool = False) -> list:
    """A StageVram per training stage of `plan` (a Plan.to_dict() / run.json); `keep_chosen`: the table keeps the
    row of each stage's own device batch (an explicit DEVICE_BS), however far from fitting."""
    return [plan_stage(s["name"], shape, total, gpu, world_size=int(s.get("world_size") or 1), headroom=headroom,
                       compiled=compiled, sequences=seqs,
                       keep=(s["device_bs"],) if keep_chosen and s.get("device_bs") else ())
            for s, shape, total, seqs, compiled in stage_shapes(plan, depth, vocab_size)]


def choose_gpu(name: Optional[str], detected: Optional[dict], profile: str) -> GpuSpec:
    """--gpu NAME wins; else the detected card (a gpu.jsonl entry: name, mem_total bytes); else the profile's card.
    ValueError (one line) when none applies."""
    if name:
        return gpu_spec(name)
    if detected and detected.get("name"):
        total = detected.get("mem_total")
        return gpu_spec(detected["name"], capacity_gib=total / 2**30 if total else None)
    if profile in PROFILE_GPU:
        return gpu_spec(PROFILE_GPU[profile])
    raise ValueError(f"no GPU detected and profile {profile!r} names none; pass --gpu NAME (e.g. --gpu 4090)")


def format_plan(stage_vrams: list, profile: str, measured: Optional[dict] = None) -> list:
    """Lines of `nanotui plan`: one table per training stage. `measured`: {stage: {device_bs: probe row}}."""
    if not stage_vrams:
        return [f"profile {profile}: no training stages"]
    sv0 = stage_vrams[0]
    lines = [f"VRAM plan for profile {profile} on {sv0.gpu.name} ({sv0.gpu.capacity_gib:.1f} GiB); predicted, not "
             f"measured; `*` = the largest DEVICE_BS predicted to fit", ""]
    for sv in stage_vrams:
        lines += format_stage(sv, (measured or {}).get(sv.stage))
        lines.append("")
    return lines[:-1]


def predicted_peak(sv: StageVram, device_bs: Optional[int]) -> Optional[float]:
    """Predicted training peak (GiB) of `sv` at `device_bs`, None when that batch is not in its table."""
    row = sv.row(device_bs) if device_bs else None
    return row.train_gib if row else None


def _gib(v) -> str:
    return f"{v:.2f} GiB" if isinstance(v, (int, float)) else "n/a"


def format_probes(probes) -> list:
    """Lines for `nanotui status`: per probed stage, the choice and the measured table (state.json `probes`)."""
    lines = []
    for p in probes or []:
        chosen = p.get("device_bs") or "none fits"
        ev = p.get("eval_bs")
        evtxt = f", eval batch {ev}" if ev not in (None, p.get("device_bs")) else ""
        room = p.get("headroom")
        lines.append(f"probe {p.get('stage')}: device_batch_size auto -> {chosen}{evtxt} (headroom "
                     f"{room:.0%}, limit {_gib(p.get('limit_gib'))} of {_gib(p.get('capacity_gib'))})"
                     if isinstance(room, (int, float)) else
                     f"probe {p.get('stage')}: device_batch_size auto -> {chosen}{evtxt}")
        rows = [f"B={r.get('device_bs')} {r.get('outcome')}" + (f" {_gib(r.get('reserved_gib'))}"
                                                               if r.get("reserved_gib") is not None else "")
                for r in p.get("rows") or []]
        if rows:
            lines.append("  " + " | ".join(rows))
    return lines


def expected_peak(plan: dict, stage: Optional[str], device_bs: Optional[int], gpu_name: Optional[str] = None,
                  mem_total: Optional[int] = None, headroom: float = DEFAULT_HEADROOM) -> Optional[float]:
    """Predicted training peak (GiB) of the running stage at its device batch on this card (for the VRAM panel's
    marker); None for a stage that does not train, an unknown batch, or when no card can be named."""
    if not stage or not device_bs:
        return None
    try:
        gpu = choose_gpu(None, {"name": gpu_name, "mem_total": mem_total} if gpu_name else None,
                         str(plan.get("profile")))
    except ValueError:
        if not mem_total:
            return None
        gpu = GpuSpec("GPU", mem_total / 2**30)
    for sv in plan_vram({"stages": [s for s in plan.get("stages") or [] if s.get("name") in (stage, "tok_train",
                                                                                              "base_train")]},
                        gpu, headroom):
        if sv.stage == stage:
            row = sv.row(device_bs)
            if row is None:  # a batch outside the table (it keeps the two smallest misfits): compute it
                from .vram import Assumptions, device_bytes, training_terms
                a = Assumptions(compiled=sv.compiled, world_size=sv.world_size)
                return device_bytes(training_terms(sv.shape, device_bs, a), a) / 2**30   # accumulating: upper
            return row.train_gib
    return None
