"""`nanotui doctor` checks: CUDA via torch, NVML/driver, free disk, logind KillUserProcesses, W&B login, boot resume,
the HumanEval code sandbox (in a subprocess: its layers, and whether a cgroup or the rlimit fallback bounds it)."""
from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

# bytes per checkpoint ≈ params * (2 bytes bf16 weights... we store fp32 weights + AdamW/Muon state): ~12 B/param
BYTES_PER_PARAM_CKPT = 12
PROFILE_PARAMS = {"4090": 561_000_000, "8xh100": 561_000_000, "cpu-demo": 2_000_000}

_TORCH_PROBE = ("import torch,json;c=torch.cuda.is_available();"
                "print(json.dumps({'torch':torch.__version__,'cuda':c,'n':torch.cuda.device_count() if c else 0,"
                "'name':torch.cuda.get_device_name(0) if c else None,'cuda_version':torch.version.cuda}))")


def check_torch_cuda(timeout: float = 60.0) -> tuple[str, str]:
    import json
    try:
        r = subprocess.run([sys.executable, "-c", _TORCH_PROBE], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "warn", f"importing torch took over {timeout:.0f}s"
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["?"])[-1]
        return "fail", f"torch cannot be imported: {last}"
    info = json.loads(r.stdout.strip().splitlines()[-1])
    if not info["cuda"]:
        return "warn", f"torch {info['torch']} sees no CUDA GPU (training will use the CPU; fine for cpu-demo)"
    return "ok", f"torch {info['torch']} (CUDA {info['cuda_version']}) sees {info['n']} GPU(s): {info['name']}"


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


def check_disk(base_dir: Path, profile: str) -> tuple[str, str]:
    probe = Path(base_dir)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    params = PROFILE_PARAMS.get(profile, PROFILE_PARAMS["4090"])
    need = 2 * params * BYTES_PER_PARAM_CKPT
    msg = f"{free / 2**30:.1f} GiB free at {probe}; two {profile} checkpoints need ~{need / 2**30:.1f} GiB"
    return ("ok" if free >= need else "fail"), msg


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
    if os.environ.get("WANDB_API_KEY"):
        return "ok", "W&B: WANDB_API_KEY is set"
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        if "api.wandb.ai" in netrc.read_text():
            return "ok", f"W&B: logged in ({netrc})"
    except OSError:
        pass
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
    for name, fn in (("cuda", check_torch_cuda), ("nvml", check_nvml),
                     ("disk", lambda: check_disk(base_dir, profile)), ("logind", check_logind),
                     ("wandb", check_wandb), ("boot", check_boot_resume), ("sandbox", check_sandbox)):
        try:
            status, detail = fn()
        except Exception as e:  # a broken check must not hide the others
            status, detail = "warn", f"check failed: {type(e).__name__}: {e}"
        out.append((name, status, detail))
    return out
