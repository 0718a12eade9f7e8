"""The preflight before every launch: gathers facts (the stages' own parsers in one subprocess, disk, W&B, GPU) and
asks nanotui/core/preflight.py what they mean. Reads only: it writes nothing anywhere."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Mapping, Optional

from nanotui.core.preflight import Finding, evaluate, stage_command
from nanotui.runtime.launch import StartError

STAGE_CHECK_TIMEOUT = 45.0   # seconds for the one process that imports torch and every stage's parser


class PreflightRefused(StartError):
    """The preflight refused a start: `lines` are the refusals, one line each (cause and fix)."""

    def __init__(self, findings: list):
        self.findings = findings
        self.lines = [f.line for f in findings if f.level == "error"]
        super().__init__("\n".join(self.lines), code=2)


def wandb_logged_in(env: Mapping) -> bool:
    """WANDB_API_KEY is set, or the netrc file holds an api.wandb.ai entry (what `wandb login` writes)."""
    if env.get("WANDB_API_KEY"):
        return True
    netrc = Path(env.get("NETRC") or Path(env.get("HOME") or Path.home()) / ".netrc")
    try:
        return "api.wandb.ai" in netrc.read_text(errors="replace")
    except OSError:
        return False


def disk_facts(base_dir: Path) -> dict:
    probe = Path(base_dir)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        free = shutil.disk_usage(probe).free
    except OSError:
        free = 0
    data = Path(base_dir) / "base_data"
    try:
        shards = sum(1 for n in os.listdir(data) if n.startswith("shard_") and n.endswith(".parquet"))
    except OSError:
        shards = 0
    return {"free": free, "path": str(probe), "shards": shards,
            "tokenizer": (Path(base_dir) / "tokenizer" / "tokenizer.json").is_file(),
            "identity": (Path(base_dir) / "identity_conversations.jsonl").is_file(),
            "demo_corpus": (data / "demo_corpus.json").is_file()}


def _stage_requests(plan: Mapping) -> tuple:
    python, stages = None, []
    for s in plan.get("stages") or []:
        cmd = stage_command(s.get("argv") or [])
        if cmd is None:
            continue
        python = python or cmd[0]
        stages.append({"name": s.get("name"), "module": cmd[1], "argv": cmd[2], "world_size": cmd[3]})
    return python, stages


def _start_stage_check(plan: Mapping, env: Mapping, needs_gpu: bool):
    python, stages = _stage_requests(plan)
    if python is None and not needs_gpu:
        return None, None
    python = python or str(plan.get("python") or "python3")
    try:
        proc = subprocess.Popen([python, "-m", "nanochat.stage_check", "--json"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(env),
                                cwd=str(plan.get("cwd") or os.getcwd()))
    except OSError as e:
        return None, f"cannot run {python} ({e.strerror or e})"
    return (proc, json.dumps({"stages": stages})), None


def _finish_stage_check(started, timeout: float) -> tuple:
    proc, request = started
    try:
        out, err = proc.communicate(request, timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return None, f"the stages' parsers did not answer within {timeout:.0f} s"
    if proc.returncode != 0:
        last = (err.strip().splitlines() or ["no output"])[-1]
        return None, f"the stage checker failed ({last})"
    try:
        return json.loads(out.strip().splitlines()[-1]), None
    except (ValueError, IndexError):
        return None, "the stage checker printed no result"


def _vram_rows(plan: Mapping, gpu: Optional[dict]) -> list:
    """(stage, device_bs, predicted GiB, limit GiB, gpu, largest that fits) for each training stage whose chosen
    DEVICE_BS is predicted not to fit on the detected card (else the profile's card)."""
    from nanotui.core.vramplan import choose_gpu, plan_vram
    try:
        spec = choose_gpu(None, gpu, str(plan.get("profile")))
    except ValueError:
        return []
    rows = []
    for sv in plan_vram(dict(plan), spec):
        stage = next((s for s in plan.get("stages") or [] if s.get("name") == sv.stage), {})
        bs = stage.get("device_bs")
        if not bs:
            continue
        row = sv.row(bs)
        if row is not None and not row.fits:
            rows.append((sv.stage, bs, row.train_gib, sv.limit_bytes / 2**30, spec.name, sv.chosen))
    return rows


def _nvml_gpu() -> Optional[dict]:
    try:
        from nanotui.runtime.gpu import open_backend
        backend = open_backend()
        try:
            gpus = backend.sample([]).get("gpus") if backend.available else None
        finally:
            backend.close()
        return gpus[0] if gpus else None
    except Exception:
        return None


def gather(plan: Mapping, base_dir: Path, env: Optional[Mapping] = None,
           timeout: float = STAGE_CHECK_TIMEOUT) -> dict:
    """The facts nanotui/core/preflight.evaluate needs. The stage checker runs while the rest is read."""
    from nanotui.core.preflight import GPU_PROFILES
    env = dict(os.environ if env is None else env)
    for s in plan.get("stages") or []:
        env.update({k: str(v) for k, v in (s.get("env") or {}).items()})
    started, error = _start_stage_check(plan, env, str(plan.get("profile")) in GPU_PROFILES)
    facts = {"env": env, "disk": disk_facts(Path(plan.get("base_dir") or base_dir)),
             "wandb_login": wandb_logged_in(env), "stage_check": None, "stage_check_error": error}
    gpu = _nvml_gpu()
    facts["gpu"] = gpu
    if gpu is not None or str(plan.get("profile")) in GPU_PROFILES:
        facts["vram"] = _vram_rows(plan, gpu)
    if started is not None:
        facts["stage_check"], facts["stage_check_error"] = _finish_stage_check(started, timeout)
    return facts


def run_preflight(plan: Mapping, base_dir: Path, env: Optional[Mapping] = None) -> tuple:
    """(findings, seconds) for `plan`; nothing is written."""
    t0 = time.monotonic()
    findings = evaluate(plan, gather(plan, base_dir, env))
    return findings, time.monotonic() - t0


def refuse_if_unfit(plan: Mapping, base_dir: Path, env: Optional[Mapping] = None) -> list:
    """The findings when nothing refuses the start; PreflightRefused (exit 2, one line per cause) otherwise."""
    findings, _ = run_preflight(plan, base_dir, env)
    if any(f.level == "error" for f in findings):
        raise PreflightRefused(findings)
    return findings


def _with_dirs(plan: Mapping, base_dir: Path) -> dict:
    plan = dict(plan)
    plan.setdefault("base_dir", str(base_dir))
    plan.setdefault("cwd", os.getcwd())
    return plan


def preflight_or_refuse(plan: Mapping, base_dir: Path, out=None) -> list:
    """The CLI's start path: warnings printed (one line each), refusals raised as PreflightRefused."""
    import sys
    out = out or sys.stdout
    findings = refuse_if_unfit(_with_dirs(plan, base_dir), base_dir)
    for line in format_findings([f for f in findings if f.level == "warn"]):
        print(line, file=out)
    return findings


def dry_run(plan: Mapping, base_dir: Path, out=None, err=None) -> int:
    """`nanotui start --dry-run`: the preflight's findings and the stages that would run; 0 = would start, 2 =
    refused (one `error:` line per cause on stderr). Nothing is started or written."""
    import shlex
    import sys
    out, err = out or sys.stdout, err or sys.stderr
    plan = _with_dirs(plan, base_dir)
    findings, seconds = run_preflight(plan, base_dir)
    errors = [f for f in findings if f.level == "error"]
    print(f"preflight of profile {plan.get('profile')} ({len(plan.get('stages') or [])} stages, base dir "
          f"{plan['base_dir']}) in {seconds:.1f} s:", file=out)
    for line in format_findings([f for f in findings if f.level != "error"]):
        print(f"  {line}", file=out)
    if errors:
        out.flush()
        for f in errors:
            print(f"error: {f.line}", file=err)
        return 2
    print("stages that would run:", file=out)
    for s in plan.get("stages") or []:
        print(f"  {s.get('name')}: {shlex.join(str(a) for a in s.get('argv') or [])}", file=out)
    print("dry run: nothing started, nothing written", file=out)
    return 0


def format_findings(findings: list) -> list:
    mark = {"error": "refused", "warn": "warning", "ok": "ok"}
    return [f"{mark.get(f.level, f.level)}: {f.check}: {f.line}" for f in findings]


__all__ = ["PreflightRefused", "gather", "run_preflight", "refuse_if_unfit", "format_findings", "wandb_logged_in",
           "disk_facts", "Finding", "dry_run", "preflight_or_refuse"]
