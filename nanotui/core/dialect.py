"""Flag dialects of training scripts (ours, upstream 2026 argparse, 2025-11 configurator): read, rewrite, resume.

Pure: the caller passes a script's source text (nanotui/runtime/dialects.py finds and caches it). Table in
docs/DIALECTS.md.
"""
from __future__ import annotations

import ast
import operator
from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence

from .argvflags import drop_flag, flag_value, norm_flag, set_flag

__all__ = ["Dialect", "OURS", "parse_source", "restart_argv", "total_batch", "device_bs", "save_every_given",
           "scratch_note", "TRAIN_SCRIPTS", "script_of", "DEFAULT_SAVE_EVERY"]

TRAIN_SCRIPTS = ("base_train", "mid_train", "chat_sft")
DEFAULT_SAVE_EVERY = 500   # the periodic save nanotui adds when the user gave none (our trainer's default)


@dataclass(frozen=True)
class Dialect:
    """How one training script spells its flags and whether it can resume.

    version: "ours" | "2026" (argparse, dashes) | "2025-11" (configurator `--key=value`) | "unknown".
    flags: {normalised name: the spelling the script accepts}; defaults: {normalised name: default or None}.
    resume: "latest" (ours: a step or 'latest'), "step" (an integer step) or None (cannot resume)."""
    version: str
    script: str
    style: str                                  # "ours" | "argparse" | "configurator"
    flags: Mapping = field(default_factory=dict)
    defaults: Mapping = field(default_factory=dict)
    resume: Optional[str] = None

    def spelling(self, name: str) -> Optional[str]:
        return self.flags.get(norm_flag(name))

    def has(self, name: str) -> bool:
        return norm_flag(name) in self.flags

    @property
    def can_resume(self) -> bool:
        return self.resume is not None

    @property
    def label(self) -> str:
        return "nanotui's nanochat" if self.version == "ours" else f"upstream nanochat {self.version}"

    def to_dict(self) -> dict:
        return {"version": self.version, "script": self.script, "style": self.style, "flags": dict(self.flags),
                "defaults": dict(self.defaults), "resume": self.resume}

    @classmethod
    def from_dict(cls, d: Mapping) -> "Dialect":
        return cls(version=str(d.get("version") or "unknown"), script=str(d.get("script") or ""),
                   style=str(d.get("style") or "argparse"), flags=dict(d.get("flags") or {}),
                   defaults=dict(d.get("defaults") or {}), resume=d.get("resume"))


OURS = Dialect(version="ours", script="", style="ours", resume="latest")


def script_of(name: str) -> Optional[str]:
    """`scripts.base_train` / `nanochat/scripts/chat_sft.py` -> base_train / chat_sft; None for other scripts."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1].rsplit(".", 1)
    for part in (base[-1], base[0]) if name.endswith(".py") else (base[-1],):
        if part in TRAIN_SCRIPTS:
            return part
    return None


# ---------------------------------------------------------------- reading a script's parser
_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.FloorDiv: operator.floordiv,
           ast.Pow: operator.pow, ast.Div: operator.truediv}


def _const(node):
    """A literal (with simple arithmetic like `20*524288`, unary minus); raises ValueError for anything else."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_const(node.operand)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        left, right = _const(node.left), _const(node.right)
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (left, right)):
            raise ValueError("not numeric")
        if isinstance(node.op, ast.Pow) and abs(right) > 64:
            raise ValueError("too large")
        return _BINOPS[type(node.op)](left, right)
    raise ValueError("not a literal")


def _argparse_flags(tree) -> tuple:
    flags, defaults = {}, {}
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == "add_argument"):
            continue
        opts = [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)
                and a.value.startswith("--")]
        if not opts:
            continue
        name = norm_flag(opts[0])
        flags[name] = opts[0]
        default = None
        for kw in node.keywords:
            if kw.arg == "default":
                try:
                    default = _const(kw.value)
                except ValueError:
                    default = None
        defaults[name] = default
    return flags, defaults


def _configurator_keys(tree) -> tuple:
    """Top-level `name = literal` assignments before the configurator's exec line: the keys it accepts."""
    flags, defaults = {}, {}
    for node in tree.body:
        if isinstance(node, ast.Expr) and "configurator" in ast.dump(node):
            break
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
            if name.startswith("_"):
                continue
            try:
                value = _const(node.value)
            except ValueError:
                continue
            if value is None or isinstance(value, (int, float, bool, str)):
                flags[name] = "--" + name
                defaults[name] = value
    return flags, defaults


def parse_source(text: str, script: str) -> Dialect:
    """The dialect of an upstream-style training script from its source. A script that reads `configurator.py`
    is 2025-11 (`--key=value`, no resume); one with argparse `add_argument` flags is 2026 when it spells them
    with dashes (resume from an integer step when it has `--resume-from-step`). Unreadable source: "unknown"."""
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return Dialect(version="unknown", script=script, style="argparse")
    if "configurator.py" in text and "add_argument" not in text:
        flags, defaults = _configurator_keys(tree)
        return Dialect(version="2025-11", script=script, style="configurator", flags=flags, defaults=defaults,
                       resume="step" if "resume_from_step" in flags else None)
    flags, defaults = _argparse_flags(tree)
    if not flags:
        return Dialect(version="unknown", script=script, style="argparse")
    dashed = any("-" in s[2:] for s in flags.values())
    resume = "step" if "resume_from_step" in flags else None
    return Dialect(version="2026" if dashed else "argparse", script=script, style="argparse", flags=flags,
                   defaults=defaults, resume=resume)


# ---------------------------------------------------------------- using it
def _int(v) -> Optional[int]:
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    if isinstance(v, str) and v.strip().lstrip("-").isdigit():
        return int(v.strip())
    return None


def _value(argv: Sequence[str], d: Dialect, name: str):
    given = flag_value(argv, name)
    return given if given is not None else d.defaults.get(norm_flag(name))


def total_batch(argv: Sequence[str], d: Dialect) -> Optional[int]:
    """Tokens per optimiser step when the command fixes it; None when the script computes it (2026: -1 = auto)
    or inherits it (2026 SFT: from the base checkpoint)."""
    n = _int(_value(argv, d, "total_batch_size"))
    return n if n and n > 0 else None


def device_bs(argv: Sequence[str], d: Dialect) -> Optional[int]:
    n = _int(_value(argv, d, "device_batch_size"))
    return n if n and n > 0 else None


def save_every_given(argv: Sequence[str]) -> bool:
    return flag_value(argv, "save_every") is not None


def _put(argv: list, d: Dialect, name: str, value) -> list:
    """Set a flag in the script's own spelling: a flag the user gave keeps its place and form; a new one is
    appended as `<spelling>=<value>` (the configurator only reads that form)."""
    if flag_value(argv, name) is not None and d.style != "configurator":
        return set_flag(argv, name, value)
    spelling = d.spelling(name) or ("--" + norm_flag(name))
    return drop_flag(argv, name) + [f"{spelling}={value}"]


def restart_argv(argv: Sequence[str], d: Dialect, device_bs: Optional[int] = None,
                 resume_step: Optional[int] = None, save_every: Optional[int] = None,
                 replace_resume: bool = True) -> list:
    """argv for an attempt in the script's own dialect: device batch set; any resume flag removed and, when the
    script can resume and `resume_step` is a committed step, `--resume-from-step=<int>` added (replace_resume=False,
    a first attempt: a resume flag the user gave stays as it is); `save_every` (a periodic save nanotui adds) only
    when the script has that flag and the user gave none."""
    out = list(argv)
    if device_bs is not None:
        out = _put(out, d, "device_batch_size", int(device_bs))
    if replace_resume:
        out = drop_flag(out, "resume_from_step")
        if resume_step is not None and d.can_resume:
            out = _put(out, d, "resume_from_step", int(resume_step))
    if save_every is not None and d.has("save_every") and not save_every_given(argv):
        out = _put(out, d, "save_every", int(save_every))
    return out


def scratch_note(stage: str, d: Dialect, step: Optional[int]) -> str:
    """The plain words for a restart of a script that cannot resume."""
    done = f"the {step} steps done so far are lost" if step else "any progress is lost"
    return (f"{stage} ({d.label}) cannot resume: a restart begins again at step 0 and {done}")
