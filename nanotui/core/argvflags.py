"""The one argv-flag helper: read, set, and drop `--flag=V` / `--flag V` (underscore or dash spellings) in a stage argv."""
from __future__ import annotations

from typing import Optional, Sequence

__all__ = ["flag_names", "flag_value", "set_flag", "drop_flag", "norm_flag"]


def norm_flag(flag: str) -> str:
    """`--device-batch-size` / `device_batch_size` -> `device_batch_size`."""
    return flag.lstrip("-").replace("-", "_")


def flag_names(flag: str) -> tuple:
    bare = norm_flag(flag)
    return ("--" + bare, "--" + bare.replace("_", "-"))


def flag_value(argv: Sequence[str], flag: str) -> Optional[str]:
    """The value of `--flag=V` / `--flag V` in argv (last one wins); None if absent."""
    names = flag_names(flag)
    value = None
    for i, a in enumerate(argv):
        for n in names:
            if a == n and i + 1 < len(argv):
                value = argv[i + 1]
            elif a.startswith(n + "="):
                value = a[len(n) + 1:]
    return value


def drop_flag(argv: Sequence[str], flag: str) -> list:
    """argv without any `--flag=V` / `--flag V`."""
    names = flag_names(flag)
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in names:
            skip = True
            continue
        if any(a.startswith(n + "=") for n in names):
            continue
        out.append(a)
    return out


def set_flag(argv: Sequence[str], flag: str, value) -> list:
    """argv with the flag set to `value`: its first occurrence keeps its spelling and form (`--flag=V` or
    `--flag V`), later occurrences are dropped; absent, `--flag=value` is appended."""
    names = flag_names(flag)
    out, i, done = [], 0, False
    argv = list(argv)
    while i < len(argv):
        a = argv[i]
        eq = next((n for n in names if a.startswith(n + "=")), None)
        if a in names:
            if not done:
                out += [a, str(value)]
                done = True
            i += 2  # the flag and its separate value
            continue
        if eq is not None:
            if not done:
                out.append(f"{eq}={value}")
                done = True
        else:
            out.append(a)
        i += 1
    if not done:
        out.append(f"--{norm_flag(flag)}={value}")
    return out
