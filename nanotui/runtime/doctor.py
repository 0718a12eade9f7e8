"""`nanotui doctor` for a profile: CUDA, NVML, the plan's disk and ranks (the preflight), logind, W&B, boot resume,
the HumanEval code sandbox (in a subprocess: its layers, and whether a cgroup or the rlimit fallback bounds it)."""
from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

def cuda_row(sc: dict | None, error: str | None, profile: str) -> tuple[str, str]:
    """torch and the GPUs it sees (from the stage checker's answer); a profile written for CUDA cards fails without."""
    from nanotui.core.preflight import GPU_PROFILES
    if not sc:
        return "warn", f"torch not checked: {error}"
    if sc.get("torch_error"):
        return "fail", f"torch cannot be imported: {sc['torch_error']}"
    if not sc.get("cuda"):
        if profile in GPU_PROFILES:
            return "fail", (f"torch {sc['torch']} sees no CUDA GPU and profile {profile} needs one; install a CUDA "
                            f"build of torch / fix the driver, or use --profile cpu-demo")
        return "warn", f"torch {sc['torch']} sees no CUDA GPU (training will use the CPU; fine for cpu-demo)"
    return "ok", (f"torch {sc['torch']} (CUDA {sc.get('cuda_version')}) sees {sc.get('devices')} GPU(s): "
                  f"{sc.get('device_name')}")


def check_nvml() -> tuple[str, str]:
    from nanotui.runtime.gpu import open_backend
    b = open_backend()
    try:
        if not b.available:
            return "warn", f"no GPU telemetry: {b.reason}"
        names = ", ".join(str(n) for n in b.names)
        return "ok", f"NVML driver {b.driver_version}: {names}"
    finally:
        b.close()


def check_plan(base_dir: Path, profile: str) -> list:
    """The preflight of the profile's plan (env overrides applied): disk sized for the shards still missing, the
    tokenizer and each training stage's retained checkpoints; ranks against CUDA devices; allocator; stage flags."""
    from nanotui.core.plan import PlanError, build_plan, collect_overrides
    from nanotui.core.preflight import disk_need, evaluate, format_bytes
    from nanotui.runtime.preflight import gather
    try:
        plan = build_plan(profile, collect_overrides(os.environ), python=sys.executable).to_dict()
    except PlanError as e:
        return [("plan", "fail", str(e))]
    plan.update(base_dir=str(base_dir), cwd=os.getcwd())
    facts = gather(plan, Path(base_dir))
    sc = facts.get("stage_check") or {}
    findings = [f for f in evaluate(plan, facts) if f.check not in ("cuda", "torch", "wandb")]
    rows = [("cuda", *cuda_row(facts.get("stage_check"), facts.get("stage_check_error"), profile))]
    disk = facts["disk"]
    need = disk_need(plan, disk, bool(sc.get("cuda")) or profile != "cpu-demo")
    detail = (f"{format_bytes(disk['free'])} free at {disk['path']}; the {profile} plan needs ~"
              f"{format_bytes(need['total'])}: shards {format_bytes(need['shards'])} ({need['shard_count']} missing, "
              f"{disk['shards']} on disk), checkpoints {format_bytes(need['checkpoints'])} (up to "
              f"{need['ckpt_count']} of {format_bytes(need['ckpt_each'])}: keep_last + the best + the one being "
              f"written, per training stage), tokenizer etc. {format_bytes(need['tokenizer'] + need['identity'])}")
    rows.append(("disk", "fail" if any(f.check == "disk" for f in findings) else "ok", detail))
    world = max([int(s.get("world_size") or 1) for s in plan["stages"]] or [1])
    ranks = [f for f in findings if f.check == "ranks"]
    rows.append(("ranks", "fail", ranks[0].line) if ranks else
                ("ranks", "ok", f"NPROC_PER_NODE={world}, {sc.get('devices', 0)} CUDA device(s) visible"))
    for f in findings:
        if f.check not in ("disk", "ranks") and f.level != "ok":
            rows.append((f.check, "fail" if f.level == "error" else "warn", f.line))
    return rows


def _logind_setting(paths: list[str]) -> tuple[str | None, str | None]:
    value, where = None, None
    for p in paths:
        try:
            text = Path(p).read_text()
        except OSError:
            continue
        for line in text.splitlines():
            m = re.match(r"\s*KillUserProcesses\s*=\s*(\S+)", line)
            if m:
                value, where = m.group(1).lower(), p
    return value, where


def check_logind(conf_root: str = "/etc/systemd") -> tuple[str, str]:
    paths = [f"{conf_root}/logind.conf"] + sorted(glob.glob(f"{conf_root}/logind.conf.d/*.conf"))
    value, where = _logind_setting(paths)
    linger = None
    if shutil.which("loginctl"):
        try:
            r = subprocess.run(["loginctl", "show-user", str(os.getuid()), "-p", "Linger"], capture_output=True,
                               text=True, timeout=5)
            if r.returncode == 0 and "=" in r.stdout:
                linger = r.stdout.strip().split("=", 1)[1]
        except (OSError, subprocess.TimeoutExpired):
            pass
    if value in ("yes", "true", "1", "on"):
        if linger == "yes":
            return "ok", f"KillUserProcesses=yes ({where}) but lingering is enabled for this user"
        return "fail", (f"KillUserProcesses=yes in {where}: logging out kills tmux, screen and the supervisor; "
                        f"run `loginctl enable-linger $USER` or set KillUserProcesses=no")
    detail = f"KillUserProcesses={value or 'no (default)'}"
    if linger is not None:
        detail += f", linger={linger}"
    return "ok", detail


def check_wandb() -> tuple[str, str]:
    """Logged in (WANDB_API_KEY or netrc); a fail when WANDB_RUN names a real run and WANDB_MODE leaves W&B on."""
    from nanotui.core.preflight import WANDB_OFF_MODES
    from nanotui.runtime.preflight import wandb_logged_in
    if wandb_logged_in(os.environ):
        return "ok", "W&B: logged in (WANDB_API_KEY or netrc)"
    run = os.environ.get("WANDB_RUN", "")
    if run and run != "dummy" and os.environ.get("WANDB_MODE", "").lower() not in WANDB_OFF_MODES:
        return "fail", (f"W&B: WANDB_RUN={run} but not logged in; run `wandb login`, or set WANDB_MODE=offline, or "
                        f"WANDB_RUN=dummy")
    return "info", "W&B: not logged in (runs use --run=dummy or WANDB_MODE=offline; `wandb login` to log)"


_SANDBOX_PROBE = ("import json;from nanochat.execution import sandbox_problem,limits_description;"
                  "p=sandbox_problem();print(json.dumps({'problem':p,'limits':None if p else limits_description()}))")


def check_sandbox(timeout: float = 60.0) -> tuple[str, str]:
    """The code sandbox chat_eval runs HumanEval in: refused (HumanEval is skipped) or which bound holds it."""
    import json
    try:
        r = subprocess.run([sys.executable, "-c", _SANDBOX_PROBE], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "warn", f"code sandbox probe took over {timeout:.0f}s"
    if r.returncode != 0:
        return "warn", f"code sandbox not checked: {(r.stderr.strip().splitlines() or ['?'])[-1]}"
    info = json.loads(r.stdout.strip().splitlines()[-1])
    if info["problem"]:
        return "warn", f"{info['problem']} (chat_eval skips HumanEval)"
    return "ok", f"code sandbox: bubblewrap + seccomp; limits: {info['limits']}"


def check_boot_resume() -> tuple[str, str]:
    """Is `nanotui service install`'s unit there, and does lingering start it at boot (not at the first login)?"""
    from nanotui.runtime import service
    why = service.systemd_absent()
    if why:
        return "info", f"runs are not resumed after a reboot here ({why}); see `nanotui resume --all-unfinished`"
    if not (service.unit_dir() / service.UNIT_NAME).exists():
        return "info", "runs are not resumed after a reboot; `nanotui service install` does that"
    linger = service.linger()
    if linger != "yes":
        return "warn", (f"{service.UNIT_NAME} is installed but lingering is {linger or 'unknown'}: it runs at your "
                        f"first login, not at boot; `sudo loginctl enable-linger $USER`")
    return "ok", f"{service.UNIT_NAME} resumes interrupted runs at boot (lingering on)"


def run_checks(base_dir: Path, profile: str = "4090") -> list[tuple[str, str, str]]:
    out = []
    for name, fn in (("plan", lambda: check_plan(base_dir, profile)), ("nvml", check_nvml), ("logind", check_logind),
                     ("wandb", check_wandb), ("boot", check_boot_resume), ("sandbox", check_sandbox)):
        try:
            result = fn()
        except Exception as e:  # a broken check must not hide the others
            result = ("warn", f"check failed: {type(e).__name__}: {e}")
        out += result if isinstance(result, list) else [(name, *result)]
    return out
