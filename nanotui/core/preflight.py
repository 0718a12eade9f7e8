"""The preflight's decisions: a plan plus facts about this machine -> refusals and warnings, one line each."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

from .argvflags import flag_value
from .vram import ModelShape, param_counts
from .vramplan import PROFILE_GPU, stage_shapes

__all__ = ["Finding", "GPU_PROFILES", "SHARD_DISK_BYTES", "stage_command", "checkpoint_bytes", "disk_need",
           "evaluate", "ALLOC_ENV", "LEGACY_ALLOC_ENV", "format_bytes"]

GPU_PROFILES = tuple(PROFILE_GPU)          # profiles written for CUDA cards
SHARD_DISK_BYTES = 100_000_000             # one FineWeb-EDU shard (= nanochat.dataset.SHARD_DISK_BYTES)
DEMO_CORPUS_BYTES = 64_000_000             # the demo corpus cap (nanochat.dataset.DEFAULT_DEMO_MAX_MB)
TOKENIZER_BYTES = 8_000_000                # tokenizer.json + token_bytes.pt, generously
IDENTITY_BYTES = 2_500_000                 # upstream's identity conversations (2.3 MB)
DEFAULT_KEEP_LAST = 3                      # the trainer's --keep_last default
ALLOC_ENV = "PYTORCH_ALLOC_CONF"           # what base_train sets (expandable segments), unless the stages configure it
LEGACY_ALLOC_ENV = "PYTORCH_CUDA_ALLOC_CONF"  # the name torch reads before 2.9 (nanochat.common.allocator_env_name)
ALLOC_ENV_SINCE = (2, 9)
WANDB_OFF_MODES = ("offline", "disabled", "dryrun")
NANOCHAT_MODULE = re.compile(r"^nanochat(\.scripts)?\.\w+$")


@dataclass(frozen=True)
class Finding:
    level: str     # "error" (refuses the start) | "warn" | "ok"
    check: str     # short name: flags, ranks, cuda, allocator, disk, wandb, vram
    line: str      # one line: the cause and the fix

    def to_dict(self) -> dict:
        return {"level": self.level, "check": self.check, "line": self.line}


def format_bytes(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB"


def stage_command(argv: Sequence[str]) -> Optional[tuple]:
    """(python, module, args, world_size) of a stage argv that runs a nanochat script (python -m or torchrun), or
    None for anything else (a fake trainer, `bash speedrun.sh`, another program)."""
    argv = [str(a) for a in argv]
    world, module, args = 1, None, []
    for i, a in enumerate(argv[:-1]):
        if a == "-m" and NANOCHAT_MODULE.match(argv[i + 1]):
            module, args = argv[i + 1], argv[i + 2:]
            break
    if module is None:
        return None
    nproc = flag_value(argv[:argv.index(module)], "nproc_per_node")
    if nproc and nproc.isdigit():
        world = int(nproc)
    if args[:1] == ["--"]:
        args = args[1:]
    return argv[0], module, args, world


def checkpoint_bytes(shape: ModelShape, cuda: bool) -> int:
    """Bytes of one training checkpoint: weights (bf16 embedding on CUDA, else fp32), AdamW's two moments of the
    embedding and lm_head, one fp32 Muon momentum per block matrix (all ranks' shards together)."""
    p = param_counts(shape)
    emb = 2 if cuda else 4
    weights = emb * p["wte"] + 4 * p["lm_head"] + 4 * p["matrices"]
    adamw = 2 * (emb * p["wte"] + 4 * p["lm_head"])
    return weights + adamw + 4 * p["matrices"]


def _int(argv, name, default):
    v = flag_value(list(argv), name)
    return int(v) if v is not None and re.fullmatch(r"-?\d+", v.strip()) else default


def disk_need(plan: Mapping, base_facts: Mapping, cuda: bool) -> dict:
    """What the plan will still write under the base dir, in bytes: missing shards, tokenizer, identity file and
    the checkpoints each training stage keeps at its peak (keep_last newest + the best + the one being written)."""
    stages = plan.get("stages") or []
    out = {"shards": 0, "shard_count": 0, "tokenizer": 0, "identity": 0, "checkpoints": 0, "ckpt_each": 0,
           "ckpt_count": 0}
    have = int(base_facts.get("shards") or 0)
    for s in stages:
        argv = list(s.get("argv") or [])
        if s.get("name") == "data" or any(a.endswith("nanochat.dataset") for a in argv):
            if "--demo" in argv:
                out["shards"] += 0 if base_facts.get("demo_corpus") else DEMO_CORPUS_BYTES
            else:
                n = flag_value(argv, "num_files")
                n = argv[argv.index("-n") + 1] if "-n" in argv[:-1] else n
                if n is not None and re.fullmatch(r"-?\d+", n):
                    want = 1823 if int(n) < 0 else int(n) + 1   # + the validation shard
                    missing = max(0, want - have)
                    out["shard_count"] += missing
                    out["shards"] += missing * SHARD_DISK_BYTES
            if "--identity" in argv and not base_facts.get("identity"):
                out["identity"] = IDENTITY_BYTES
        if s.get("name") == "tok_train" and not base_facts.get("tokenizer"):
            out["tokenizer"] = TOKENIZER_BYTES
    for s, shape, _total, _seqs, _compiled in stage_shapes(dict(plan)):
        keep = _int(s.get("argv") or [], "keep_last", DEFAULT_KEEP_LAST)
        each = checkpoint_bytes(shape, cuda)
        if keep <= 0:   # keep all: every save_every steps of the horizon (unknown horizon: the default's count)
            iters = s.get("num_iterations") or 21400
            count = iters // max(1, _int(s.get("argv") or [], "save_every", 500)) + 1
        else:
            count = keep + 2
        out["checkpoints"] += count * each
        out["ckpt_each"] = max(out["ckpt_each"], each)
        out["ckpt_count"] += count
    out["total"] = out["shards"] + out["tokenizer"] + out["identity"] + out["checkpoints"]
    return out


def _version(text: Optional[str]) -> Optional[tuple]:
    m = re.match(r"(\d+)\.(\d+)", text or "")
    return (int(m.group(1)), int(m.group(2))) if m else None


def _wandb_runs(plan: Mapping) -> list:
    runs = []
    for s in plan.get("stages") or []:
        if s.get("trains"):
            r = flag_value(list(s.get("argv") or []), "run")
            if r and r != "dummy":
                runs.append(r)
    return runs


def _flag_fix(stage: str, error: str) -> str:
    if "device_batch_size" in error:
        knob = "SFT_BS" if stage == "chat_sft" else "DEVICE_BS"
        return f"; set {knob} (or --set {stage}:--device_batch_size=N) to one of those"
    if "did you mean" in error:
        return f"; correct the --set {stage}:... flag"
    return f"; fix it with --set {stage}:--flag=value"


def evaluate(plan: Mapping, facts: Mapping) -> list:
    """Findings for `plan` (run.json form) given `facts` (nanotui/runtime/preflight.py gathers them):
    stage_check (the stages' own parsers: {torch, torch_error, cuda, devices, results, wandb}) or
    stage_check_error; disk {free, path, shards, tokenizer, identity, demo_corpus}; env (the stages'
    environment); wandb_login (bool); gpu (an NVML card {name, mem_total} or None); vram (list of
    (stage, device_bs, predicted GiB, limit GiB, gpu name, fits-at) rows over the limit)."""
    out = []
    profile = str(plan.get("profile") or "")
    env = facts.get("env") or {}
    sc = facts.get("stage_check")
    names = {r.get("name") for r in (sc or {}).get("results") or []}
    if facts.get("stage_check_error"):
        out.append(Finding("warn", "flags", f"stage flags not checked: {facts['stage_check_error']}"))
    if sc and sc.get("torch_error"):
        out.append(Finding("error", "torch", f"torch cannot be imported by the stages ({sc['torch_error']}); "
                                             f"install torch in this environment (pip install torch)"))
    for r in (sc or {}).get("results") or []:
        if not r.get("ok"):
            out.append(Finding("error", "flags", f"{r['name']}: {r['error']}{_flag_fix(r['name'], r['error'])}"))
    cuda = bool(sc and sc.get("cuda"))
    devices = int((sc or {}).get("devices") or 0)
    world = max([int(s.get("world_size") or 1) for s in plan.get("stages") or []] or [1])
    needs_gpu = profile in GPU_PROFILES
    if sc and not sc.get("torch_error"):
        if needs_gpu and not cuda:
            out.append(Finding("error", "cuda", f"profile {profile} needs a CUDA GPU, and torch {sc.get('torch')} "
                                                f"sees none here; use --profile cpu-demo on this machine, or "
                                                f"install a CUDA build of torch / fix the NVIDIA driver"))
        if world > 1 and (cuda or needs_gpu) and world > devices:
            out.append(Finding("error", "ranks", f"NPROC_PER_NODE={world} needs {world} visible CUDA devices and "
                                                 f"there {'is' if devices == 1 else 'are'} {devices}; set "
                                                 f"NPROC_PER_NODE={max(1, devices)} (or check CUDA_VISIBLE_DEVICES)"))
        tv = _version(sc.get("torch"))
        if (cuda or needs_gpu) and tv and tv < ALLOC_ENV_SINCE and not env.get(LEGACY_ALLOC_ENV) \
                and not sc.get("allocator_configured"):
            out.append(Finding("warn", "allocator",
                               f"torch {sc.get('torch')} ignores {ALLOC_ENV} (read from torch "
                               f"{'.'.join(map(str, ALLOC_ENV_SINCE))} on), so the stages train without expandable "
                               f"segments (more fragmentation, earlier OOM); upgrade torch or export "
                               f"{LEGACY_ALLOC_ENV}=expandable_segments:True"))
        alloc = sc.get("allocator") or {}
        if (cuda or needs_gpu) and alloc.get("value") and "expandable_segments:true" not in alloc["value"].lower():
            out.append(Finding("warn", "allocator",
                               f"the stages will run with {alloc.get('name')}={alloc['value']} (from your "
                               f"environment): no expandable segments, which the VRAM plan assumes (more "
                               f"fragmentation, earlier OOM); unset it or add expandable_segments:True"))
    disk = facts.get("disk")
    if disk:
        need = disk_need(plan, disk, cuda or needs_gpu)
        if need["total"] > int(disk.get("free") or 0):
            parts = []
            if need["shards"]:
                parts.append(f"shards {format_bytes(need['shards'])}"
                             + (f" ({need['shard_count']} x {SHARD_DISK_BYTES / 1e6:.0f} MB)" if need["shard_count"]
                                else ""))
            if need["checkpoints"]:
                parts.append(f"checkpoints {format_bytes(need['checkpoints'])} (up to {need['ckpt_count']} of "
                             f"{format_bytes(need['ckpt_each'])})")
            if need["tokenizer"] + need["identity"]:
                parts.append(f"tokenizer etc. {format_bytes(need['tokenizer'] + need['identity'])}")
            out.append(Finding("error", "disk", f"not enough disk at {disk.get('path')}: "
                                                f"{format_bytes(disk.get('free') or 0)} free, this plan needs "
                                                f"~{format_bytes(need['total'])} ({', '.join(parts)}); free space, "
                                                f"lower --keep_last, or set NANOCHAT_BASE_DIR to a bigger disk"))
    runs = _wandb_runs(plan)
    mode = str(env.get("WANDB_MODE") or "").lower()
    if runs and mode not in WANDB_OFF_MODES:
        if sc and sc.get("wandb") is False:
            out.append(Finding("error", "wandb", f"W&B run name {runs[0]!r} is set but wandb is not installed; "
                                                 f"pip install wandb, or WANDB_RUN=dummy, or WANDB_MODE=offline"))
        elif not facts.get("wandb_login"):
            out.append(Finding("error", "wandb", f"W&B run name {runs[0]!r} is set but W&B is not logged in; run "
                                                 f"`wandb login`, or set WANDB_MODE=offline, or WANDB_RUN=dummy"))
    for row in facts.get("vram") or []:
        stage, bs, gib, limit, gpu, fits = row
        better = f"DEVICE_BS={fits} is predicted to fit" if fits else "nothing is predicted to fit"
        out.append(Finding("warn", "vram", f"{stage}: DEVICE_BS={bs} is predicted to need {gib:.1f} GiB on {gpu} "
                                           f"(limit {limit:.1f} GiB); {better} (`nanotui plan`); if it runs out of "
                                           f"memory the OOM fallback halves it from the last checkpoint"))
    if not [f for f in out if f.level == "error"]:
        checked = len(names)
        out.insert(0, Finding("ok", "flags", f"{checked} stage command line(s) accepted by their own parsers"
                                             if sc else "no nanochat stage to check"))
    return out
