"""Parse-only mode of every pipeline script: its own flags and batch arithmetic, no data, no device, nothing written.

    python -m nanochat.stage_check [--world_size N] MODULE [FLAGS...]    one stage: exit 0, or 2 with one line
    python -m nanochat.stage_check --json < {"stages": [{"name", "module", "argv", "world_size"}, ...]}

The JSON form checks many stages in one process (torch is imported once) and prints one JSON object: `torch`
(version or null), `torch_error`, `cuda` (torch sees CUDA), `devices` (CUDA device count; counting creates no
context), `cuda_version`, `device_name` (of device 0), `allocator_configured` (the stages set the allocator
variable this torch reads), `allocator` ({name, value} they will set here), `wandb` (installed), `results`
[{name, ok, error}]. A script takes part through `check_args(argv, world_size)` (training stages: flags + batch
arithmetic), else `build_parser()`, else `parse_args(argv)`.
"""
from __future__ import annotations

import importlib
import json
import os
import sys

from nanochat.common import UsageError

MODULES = ("nanochat.dataset", "nanochat.report", "nanochat.scripts.tok_train", "nanochat.scripts.tok_eval",
           "nanochat.scripts.base_train", "nanochat.scripts.base_eval", "nanochat.scripts.mid_train",
           "nanochat.scripts.chat_eval", "nanochat.scripts.chat_sft", "nanochat.scripts.chat_cli")


def check(module: str, argv: list, world_size: int = 1) -> None:
    """UsageError (one line) when `module` would refuse `argv` at start; returns None when it parses."""
    if module not in MODULES:
        raise UsageError(f"{module} is not a nanochat pipeline script; known: {', '.join(MODULES)}")
    mod = importlib.import_module(module)
    argv = list(argv)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if hasattr(mod, "check_args"):
        mod.check_args(argv, world_size=world_size)
    elif hasattr(mod, "build_parser"):
        mod.build_parser().parse_args(argv)
    else:
        mod.parse_args(argv)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def check_many(stages: list) -> dict:
    import importlib.util
    out = {"torch": None, "torch_error": None, "cuda": False, "devices": 0, "results": [],
           "wandb": importlib.util.find_spec("wandb") is not None}
    try:
        import torch
        out["torch"] = torch.__version__
        out["cuda"] = bool(torch.cuda.is_available())
        out["devices"] = torch.cuda.device_count() if out["cuda"] else 0
        out["cuda_version"] = torch.version.cuda
        out["device_name"] = torch.cuda.get_device_name(0) if out["devices"] else None
        import nanochat.common as common   # stages that set the allocator name this torch reads themselves
        out["allocator_configured"] = hasattr(common, "configure_allocator")
        if out["allocator_configured"]:   # what they will set, from this environment (a copy: nothing changes)
            env = dict(os.environ)
            name = common.configure_allocator(env, torch.__version__)
            out["allocator"] = {"name": name, "value": env.get(name)}
    except Exception as e:  # a broken install: every stage would fail the same way
        out["torch_error"] = _one_line(e)
    for st in stages:
        res = {"name": st.get("name"), "ok": True, "error": None}
        try:
            check(st["module"], st.get("argv") or [], int(st.get("world_size") or 1))
        except UsageError as e:
            res.update(ok=False, error=_one_line(e))
        except Exception as e:  # an import error etc.: report it, the caller decides
            res.update(ok=False, error=f"{type(e).__name__}: {_one_line(e)}")
        out["results"].append(res)
    return out


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--json"]:
        try:
            request = json.loads(sys.stdin.read() or "{}")
        except ValueError as e:
            print(f"error: --json wants a JSON object on stdin ({e})", file=sys.stderr)
            return 2
        print(json.dumps(check_many(request.get("stages") or [])))
        return 0
    world = 1
    if argv and argv[0].startswith("--world_size"):
        _, eq, value = argv[0].partition("=")
        value, argv = (value, argv[1:]) if eq else ((argv[1] if len(argv) > 1 else ""), argv[2:])
        if not value.isdigit() or int(value) < 1:
            print(f"error: --world_size must be a positive integer, got {value!r}", file=sys.stderr)
            return 2
        world = int(value)
    if not argv:
        print("error: name the script: python -m nanochat.stage_check MODULE [FLAGS...]", file=sys.stderr)
        return 2
    try:
        check(argv[0], argv[1:], world)
    except UsageError as e:
        print(f"error: {argv[0]}: {_one_line(e)}", file=sys.stderr)
        return 2
    print(f"ok: {argv[0]} accepts these flags")
    return 0


if __name__ == "__main__":
    sys.exit(main())
