"""Checkpoint discovery without torch: reads meta JSON and file sizes (docs/CONTRACTS.md "Checkpoints"; upstream = unverified)."""
from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass
from typing import Iterable, Optional

__all__ = ["CheckpointInfo", "CKPT_STAGES", "discover", "scan_dir", "latest_valid", "latest_usable"]

CKPT_STAGES = ("base", "mid", "chatsft", "chatrl")
_META_RE = re.compile(r"meta_(\d+)\.json$")
_MODEL_RE = re.compile(r"model_(\d+)\.pt$")


@dataclass(frozen=True)
class CheckpointInfo:
    stage: str                 # "base" | "mid" | "chatsft" | "chatrl" (the <stage>_checkpoints directory)
    tag: str                   # model tag, e.g. "d20" or "demo"
    step: int
    path: str                  # the checkpoint directory holding model_/optim_/meta_ files
    mtime: float               # of the meta file (or of the model file when the meta is missing)
    size_bytes: int            # model + optimizer + meta files of this step that exist
    val_bpb: Optional[float]
    status: str                # "valid" | "invalid" | "unverified"
    reason: str = ""           # why invalid / unverified; "" when valid
    device_bs: Optional[int] = None
    max_seq_len: Optional[int] = None
    run_id: Optional[str] = None  # the nanotui run that wrote it (meta `run_id`); None: upstream or older

    def to_dict(self) -> dict:
        return asdict(self)


def _size(path: str) -> Optional[int]:
    try:
        return os.stat(path).st_size
    except OSError:
        return None


def _step_files(names: Iterable[str], step: int) -> list:
    tag = f"{step:06d}"
    return [n for n in names if (n.startswith(("model_", "optim_", "meta_")) and tag in n
                                 and not n.endswith(".tmp") and ".tmp" not in n)]


def scan_dir(ckpt_dir: str, stage: str = "", tag: str = "") -> list:
    """All checkpoint steps found in one `<stage>_checkpoints/<tag>` directory, oldest step first."""
    try:
        names = os.listdir(ckpt_dir)
    except OSError:
        return []
    metas, models = {}, {}
    for n in names:
        m = _META_RE.fullmatch(n)
        if m:
            metas[int(m.group(1))] = n
            continue
        m = _MODEL_RE.fullmatch(n)
        if m:
            models[int(m.group(1))] = n
    out = []
    for step in sorted(set(metas) | set(models)):
        files = _step_files(names, step)
        size = sum(s for s in (_size(os.path.join(ckpt_dir, f)) for f in files) if s is not None)
        if step not in metas:
            out.append(CheckpointInfo(stage, tag, step, ckpt_dir,
                                      _mtime(os.path.join(ckpt_dir, models[step])), size, None,
                                      "invalid", f"no meta_{step:06d}.json (save did not finish)"))
            continue
        meta_path = os.path.join(ckpt_dir, metas[step])
        try:
            mtime = os.path.getmtime(meta_path)
            with open(meta_path, "r", encoding="utf-8") as fh:
                meta = json.load(fh)
            if not isinstance(meta, dict):
                raise ValueError("not a JSON object")
        except FileNotFoundError:
            continue  # deleted by retention while we listed: not a checkpoint any more
        except (OSError, ValueError) as exc:
            out.append(CheckpointInfo(stage, tag, step, ckpt_dir, _mtime(meta_path), size, None, "invalid",
                                      f"{metas[step]} unreadable: {exc}".splitlines()[0]))
            continue
        val_bpb = meta.get("val_bpb")
        val_bpb = float(val_bpb) if isinstance(val_bpb, (int, float)) and not isinstance(val_bpb, bool) else None
        device_bs = _opt_int(meta.get("device_batch_size"))
        seq_len = _opt_int(meta.get("max_seq_len"))
        if meta.get("step") is not None and _opt_int(meta.get("step")) != step:
            status, reason = "invalid", f"{metas[step]} says step {meta.get('step')}"
        elif "files" in meta:
            status, reason = _check_files(ckpt_dir, meta["files"], step)
        elif step in models and (_size(os.path.join(ckpt_dir, models[step])) or 0) > 0:
            status, reason = "unverified", "upstream checkpoint: no file list in meta to check sizes against"
        else:
            status, reason = "invalid", f"model_{step:06d}.pt missing or empty"
        run_id = meta.get("run_id") if isinstance(meta.get("run_id"), str) else None
        out.append(CheckpointInfo(stage, tag, step, ckpt_dir, mtime, size, val_bpb, status, reason,
                                  device_bs, seq_len, run_id))
    return out


def _mtime(path: str) -> float:
    try:
        return os.path.getmtime(path)
    except OSError:
        return 0.0


def _opt_int(value) -> Optional[int]:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


def _check_files(ckpt_dir: str, files, step: int) -> tuple:
    """The rule of nanochat/checkpoint.py: the meta lists the model file, plain names only, sizes match."""
    model = f"model_{step:06d}.pt"
    if not isinstance(files, dict) or model not in files:
        return "invalid", f"meta does not list {model}"
    for name, expected in files.items():
        if not isinstance(name, str) or "/" in name or "\\" in name or name.startswith("."):
            return "invalid", f"meta lists an invalid file name {name!r}"
        actual = _size(os.path.join(ckpt_dir, name))
        if actual is None:
            return "invalid", f"{name} missing"
        if isinstance(expected, bool) or not isinstance(expected, int) or actual != expected:
            return "invalid", f"{name} is {actual} bytes, meta says {expected!r}"
    return "valid", ""


def discover(base_dir: str, stages: Iterable[str] = CKPT_STAGES, tag: Optional[str] = None) -> list:
    """Every checkpoint under `$base_dir/{stage}_checkpoints/<tag>/`, sorted by (stage order, tag, step)."""
    out = []
    for stage in stages:
        root = os.path.join(base_dir, f"{stage}_checkpoints")
        try:
            tags = sorted(os.listdir(root))
        except OSError:
            continue
        for t in tags:
            if tag is not None and t != tag:
                continue
            d = os.path.join(root, t)
            if os.path.isdir(d):
                out.extend(scan_dir(d, stage, t))
    return out


def latest_valid(infos: Iterable[CheckpointInfo], stage: Optional[str] = None,
                 tag: Optional[str] = None) -> Optional[CheckpointInfo]:
    """Newest checkpoint with status "valid" (ours) for the stage/tag, or None."""
    best = None
    for c in infos:
        if c.status == "valid" and (stage is None or c.stage == stage) and (tag is None or c.tag == tag):
            if best is None or c.step > best.step:
                best = c
    return best


def latest_usable(infos: Iterable[CheckpointInfo], stage: Optional[str] = None,
                  tag: Optional[str] = None) -> Optional[CheckpointInfo]:
    """Newest checkpoint that is valid or unverified (upstream), or None."""
    best = None
    for c in infos:
        if c.status != "invalid" and (stage is None or c.stage == stage) and (tag is None or c.tag == tag):
            if best is None or c.step > best.step:
                best = c
    return best
