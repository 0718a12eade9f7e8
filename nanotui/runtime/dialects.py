"""Finds a command's training script and its dialect (cached by file hash); upstream's committed steps; attempt argv.

Pure dialect logic lives in nanotui/core/dialect.py; this module reads files (the script, the checkpoint
directory, the cache). Contract: docs/DIALECTS.md.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Mapping, Optional, Sequence

from nanotui.core.dialect import (DEFAULT_SAVE_EVERY, OURS, Dialect, parse_source, restart_argv,
                                  save_every_given, scratch_note, script_of)

__all__ = ["find_script", "discover", "dialect_of", "cache_dir", "command_plan", "newest_committed_step",
           "committed_steps", "attempt_argv", "stage_dialect", "default_save_every", "resume_words", "resume_refusal",
           "upstream_step_problem", "dialect_event"]

_OURS_MARK = "nanochat.trainer"   # our scripts run on the shared trainer; upstream's never import it


def cache_dir() -> Path:
    root = os.environ.get("NANOTUI_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "nanotui")
    return Path(root) / "dialects"


def find_script(argv: Sequence[str], cwd: Optional[str]) -> Optional[tuple]:
    """(path of the training script the command runs, script name) for `python -m X.base_train`, `torchrun ...
    -m X.chat_sft`, or `python path/base_train.py`; None when the command runs no training script or the file
    is not there (a module from site-packages: then it is treated as ours)."""
    argv = [str(a) for a in argv]
    base = Path(cwd or ".")
    for i, a in enumerate(argv[:-1]):
        if a == "-m" and script_of(argv[i + 1]):
            path = base / (argv[i + 1].replace(".", "/") + ".py")
            return (path, script_of(argv[i + 1])) if path.is_file() else None
    for a in argv:
        if a.endswith(".py") and script_of(a):
            path = base / a
            return (path, script_of(a)) if path.is_file() else None
    return None


def discover(path: Path, script: str) -> Dialect:
    """The dialect of one script file: read from its parser (core.dialect.parse_source), cached under
    `cache_dir()/<sha256 of the file>.json` so each checkout version is read once."""
    data = Path(path).read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    cached = cache_dir() / f"{sha}.json"
    try:
        return Dialect.from_dict(json.loads(cached.read_text()))
    except (OSError, ValueError, AttributeError):
        pass
    text = data.decode("utf-8", errors="replace")
    d = OURS if _OURS_MARK in text else parse_source(text, script)
    if d is OURS:
        d = Dialect(version="ours", script=script, style="ours", resume="latest")
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(d.to_dict(), indent=1))
        os.replace(tmp, cached)
    except OSError:
        pass  # a read-only cache only costs a re-read next time
    return d


def dialect_of(argv: Sequence[str], cwd: Optional[str]) -> Optional[Dialect]:
    found = find_script(argv, cwd)
    try:
        return discover(*found) if found else None
    except OSError:   # unreadable script: supervised as before, without a dialect
        return None


def default_save_every() -> int:
    """The periodic save nanotui adds where the user gave none: NANOTUI_SAVE_EVERY, else the profile default."""
    text = os.environ.get("NANOTUI_SAVE_EVERY", "").strip()
    return int(text) if text.isdigit() and int(text) > 0 else DEFAULT_SAVE_EVERY


def command_plan(argv: Sequence[str], base_dir: str, cwd: Optional[str], name: str = "command") -> tuple:
    """(plan dict, notes) for `nanotui run -- CMD`: core.plan.plan_for_command with the command's dialect; an
    upstream training stage records `dialect` and `ckpt_dir`, and gets a periodic save when the script can resume
    but the user gave none (`save_every`, `save_every_added` in run.json). Notes are lines for the user."""
    from nanotui.core.plan import plan_for_command
    d = dialect_of(argv, cwd)
    plan = plan_for_command(argv, base_dir, dialect=d).to_dict()
    notes = []
    stage = plan["stages"][0]
    stage["name"] = name
    if d is None or d.version == "ours" or not stage.get("trains"):
        return plan, notes
    stage["dialect"] = d.to_dict()
    stage["ckpt_dir"] = os.path.join(base_dir, stage["ckpt_subdir"]) if stage.get("ckpt_subdir") else None
    inherited = _inherit_from_base(stage, d, argv, base_dir)
    if inherited:
        notes.append(f"{name}: batch settings inherited from the base checkpoint: " +
                     ", ".join(f"{k}={v}" for k, v in inherited.items()))
    where = f"{name}: {d.script} is {d.label} ({d.style} flags"
    if d.can_resume and d.has("save_every") and not save_every_given(argv):
        every = default_save_every()
        stage["argv"] = restart_argv(stage["argv"], d, save_every=every)
        stage["save_every"], stage["save_every_added"] = every, True
        notes.append(f"{where}); it saves only at the end unless told, so nanotui adds "
                     f"{d.spelling('save_every')}={every} to make it resumable")
    elif not d.can_resume:
        notes.append(f"{where}) and cannot resume: after an out-of-memory error it restarts from step 0 only "
                     f"with your consent (the dashboard asks; --grace given at start consents)")
    else:
        notes.append(f"{where}); resumes with {d.spelling('resume_from_step')}=<newest committed step>")
    return plan, notes


# what upstream 2026 SFT uses when neither its flags nor the base checkpoint's meta say (its own fallbacks)
_SFT_INHERITS = (("device_bs", "device_batch_size", 32), ("seq_len", "max_seq_len", 2048),
                 ("total_batch_size", "total_batch_size", 524288))


def _inherit_from_base(stage: dict, d: Dialect, argv: Sequence[str], base_dir: str) -> dict:
    """Upstream 2026 SFT takes device batch, sequence length and total batch from the base checkpoint it loads
    unless given: read them the same way (newest meta of base_checkpoints/<tag>, or `--model-step`), so the OOM
    ladder has a batch to lower and a total to keep. Returns what was filled in."""
    from nanotui.core.argvflags import flag_value
    if d.script != "chat_sft" or d.defaults.get("device_batch_size", 0) is not None or not stage.get("model_tag"):
        return {}
    src = Path(base_dir) / "base_checkpoints" / stage["model_tag"]
    step = flag_value(argv, "model_step")
    metas = sorted(src.glob("meta_*.json")) if step is None else [src / f"meta_{int(step):06d}.json"]
    try:
        meta = json.loads(metas[-1].read_text()) if metas else None
    except (OSError, ValueError):
        meta = None
    if not isinstance(meta, dict):
        return {}
    filled = {}
    for field_name, key, fallback in _SFT_INHERITS:
        if stage.get(field_name) is None:
            value = meta.get(key)
            stage[field_name] = value if isinstance(value, int) and not isinstance(value, bool) else fallback
            filled[key] = stage[field_name]
    return filled


# ---------------------------------------------------------------- upstream checkpoints
_META_RE = re.compile(r"^meta_(\d+)\.json$")
_ZIP_END = b"PK\x05\x06"


def _complete_zip(path: Path) -> bool:
    """torch.save writes a zip archive whose end-of-central-directory record comes last: a file cut short by a
    kill has none."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            f.seek(max(0, size - 65536 - 22))
            return _ZIP_END in f.read()
    except OSError:
        return False


def _committed(root: Path, step: int, world_size: int) -> bool:
    try:
        json.loads((root / f"meta_{step:06d}.json").read_text())
    except (OSError, ValueError):
        return False
    if not _complete_zip(root / f"model_{step:06d}.pt"):
        return False
    ranks = [root / f"optim_{step:06d}_rank{r}.pt" for r in range(max(1, world_size))]
    return all(_complete_zip(p) for p in ranks) or _complete_zip(root / f"optim_{step:06d}.pt")


def committed_steps(ckpt_dir: Optional[str], world_size: int = 1, newest_only: bool = False) -> list:
    """The steps of an upstream checkpoint directory that are complete, oldest first: the meta JSON parses, and
    the model file and optimizer file(s) (2026: `optim_<step>_rank<r>.pt` for every rank; 2025-11:
    `optim_<step>.pt`) are whole torch archives. Upstream writes these files in place and its meta before its
    optimizer state, so a step whose writing was cut short is left out."""
    try:
        names = os.listdir(ckpt_dir) if ckpt_dir else []
    except OSError:
        return []
    root, found = Path(ckpt_dir or "."), []
    for step in sorted((int(m.group(1)) for m in map(_META_RE.match, names) if m), reverse=True):
        if _committed(root, step, world_size):
            found.append(step)
            if newest_only:
                break
    return found[::-1]


def newest_committed_step(ckpt_dir: Optional[str], world_size: int = 1) -> Optional[int]:
    """The newest committed step (see committed_steps), None when there is none."""
    steps = committed_steps(ckpt_dir, world_size, newest_only=True)
    return steps[-1] if steps else None


# ---------------------------------------------------------------- the supervisor's hook
def stage_dialect(stage: Mapping) -> Optional[Dialect]:
    d = stage.get("dialect")
    return Dialect.from_dict(d) if isinstance(d, Mapping) and d.get("version") != "ours" else None


def attempt_argv(stage: Mapping, device_bs: Optional[int], resume) -> tuple:
    """(argv, resume step used or None) of an attempt of an upstream stage: `resume` "latest" becomes the newest
    committed step (none yet: a fresh start), an int stays; a script that cannot resume always starts fresh.
    resume None (a first attempt) keeps the command's own resume flag, if the user gave one."""
    d = stage_dialect(stage)
    step = None
    if d is not None and d.can_resume and resume is not None:
        if resume == "latest":
            step = newest_committed_step(stage.get("ckpt_dir"), int(stage.get("world_size") or 1))
        else:
            step = int(resume)
    return restart_argv(stage["argv"], d, device_bs=device_bs, resume_step=step,
                        replace_resume=resume is not None), step


def resume_words(stage: Mapping, resume, steps_done: Optional[int] = None) -> str:
    """Where an attempt restarts, in words for events: ours "the newest checkpoint" / "checkpoint step S";
    an upstream script the committed step it really gets (or step 0), and for one that cannot resume the plain
    statement that progress is lost."""
    d = stage_dialect(stage)
    if d is None:
        if resume is None:
            return "step 0"
        return "the newest checkpoint" if resume == "latest" else f"checkpoint step {resume}"
    if not d.can_resume:
        return "step 0: " + scratch_note(d.script or stage.get("name"), d, steps_done)
    step = attempt_argv(stage, None, resume)[1]
    if step is None:
        return "step 0 (no committed checkpoint yet)"
    return f"committed step {step} ({d.spelling('resume_from_step')}={step})"


def resume_refusal(stage: Optional[Mapping], steps_done: Optional[int], run_id: str) -> Optional[str]:
    """Why `nanotui resume` without consent must not restart this stage (a script that cannot resume, with steps
    done that a restart would lose), else None. `--grace` on the resume is the consent."""
    d = stage_dialect(stage) if stage else None
    if d is None or d.can_resume or not steps_done:
        return None
    return (f"{scratch_note(d.script or stage.get('name'), d, steps_done)}; to restart it from step 0 anyway, "
            f"run `nanotui resume {run_id} --grace 0`")


def dialect_event(stage: Mapping) -> dict:
    """Fields of the `dialect` event a stage's first attempt records (and says in its message)."""
    d = stage.get("dialect") or {}
    added = stage.get("save_every_added")
    return {"stage": stage["name"], "version": d.get("version"), "save_every": stage.get("save_every"),
            "message": f"{stage['name']}: upstream nanochat {d.get('version')} flags" + (
                f"; nanotui added a periodic save every {stage['save_every']} steps (the script saves only at the "
                f"end unless told)" if added else "")}


def upstream_step_problem(stage: Mapping, step: int) -> Optional[str]:
    """Why `nanotui resume --step S` cannot restart this upstream stage at S, else None: the script cannot
    resume, or S is not a committed step of its checkpoint directory (upstream's checkpoints name no run)."""
    d = stage_dialect(stage)
    if d is not None and not d.can_resume:
        return f"{d.script} ({d.label}) cannot resume from a step; leave --step out"
    steps = committed_steps(stage.get("ckpt_dir"), int(stage.get("world_size") or 1))
    if step in steps:
        return None
    return (f"{stage.get('name')}: no committed checkpoint at step {step} in {stage.get('ckpt_dir')}; "
            f"committed steps: {', '.join(map(str, steps)) or 'none'}")
