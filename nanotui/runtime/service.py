"""The systemd user unit that resumes interrupted runs at boot, and the resume-all-unfinished pass it runs."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from nanotui.core.resumable import interrupted

UNIT_NAME = "nanotui-resume.service"
STOP_TIMEOUT_S = 300    # shutdown: the supervisors' own SIGTERM -> checkpoint -> exit must fit (stage stop 120 s)


class ServiceError(Exception):
    """`nanotui service` cannot do what was asked here; str() is one line (exit 2)."""


@dataclass(frozen=True)
class UnitSettings:
    python: str
    base_dir: str
    path_env: str
    unit_name: str = UNIT_NAME
    extra_env: tuple = ()   # more ("NAME", "value") pairs for the unit's environment


def unit_settings(unit_name: str = UNIT_NAME) -> UnitSettings:
    from nanotui.runtime.rundir import default_base_dir
    bin_dir = str(Path(sys.executable).parent)
    path = os.pathsep.join(dict.fromkeys([bin_dir] + os.environ.get("PATH", "/usr/bin:/bin").split(os.pathsep)))
    return UnitSettings(python=sys.executable, base_dir=str(default_base_dir()), path_env=path, unit_name=unit_name)


def _quote(value: str) -> str:
    """A systemd Environment= / ExecStart= word: double-quoted, with \\ and \" escaped, % doubled."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%") + '"'


def unit_text(s: UnitSettings) -> str:
    """The unit file. Type=oneshot + RemainAfterExit keeps the resumed supervisors in the unit's cgroup, so at the
    next shutdown systemd stops them with one SIGTERM (they checkpoint) and waits TimeoutStopSec before SIGKILL."""
    return (
        "# written by `nanotui service install`; remove with `nanotui service uninstall`\n"
        "[Unit]\n"
        "Description=nanotui: resume training runs that a reboot or power loss interrupted\n"
        "\n"
        "[Service]\n"
        "Type=oneshot\n"
        "RemainAfterExit=yes\n"
        f"Environment={_quote('NANOCHAT_BASE_DIR=' + s.base_dir)}\n"
        f"Environment={_quote('PATH=' + s.path_env)}\n"
        "Environment=PYTHONUNBUFFERED=1\n"
        + "".join(f"Environment={_quote(k + '=' + v)}\n" for k, v in s.extra_env) +
        f"ExecStart={_quote(s.python)} -m nanotui.cli resume --all-unfinished\n"
        "TimeoutStartSec=600\n"
        f"TimeoutStopSec={STOP_TIMEOUT_S}\n"
        "\n"
        "[Install]\n"
        "WantedBy=default.target\n"
    )


def unit_dir(env=None) -> Path:
    env = os.environ if env is None else env
    xdg = env.get("XDG_CONFIG_HOME") or ""
    root = Path(xdg) if xdg.startswith("/") else Path.home() / ".config"
    return root / "systemd" / "user"


def systemd_absent() -> Optional[str]:
    """Why systemd user units cannot be used here, or None."""
    if not Path("/run/systemd/system").is_dir():
        return "systemd is not running on this machine (no /run/systemd/system)"
    if shutil.which("systemctl") is None:
        return "systemctl is not installed"
    try:
        r = subprocess.run(["systemctl", "--user", "show-environment"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"`systemctl --user` does not answer ({e})"
    if r.returncode != 0:
        why = (r.stderr.strip().splitlines() or ["no user manager"])[-1]
        return f"no systemd user manager for this user ({why})"
    return None


def _refusal(why: str) -> ServiceError:
    return ServiceError(f"{why}; instead run `nanotui resume --all-unfinished` at boot another way "
                        f"(e.g. `@reboot {sys.executable} -m nanotui.cli resume --all-unfinished` in `crontab -e`)")


def _systemctl(*args: str) -> str:
    r = subprocess.run(["systemctl", "--user", *args], capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        raise ServiceError(f"systemctl --user {' '.join(args)} failed: "
                           f"{(r.stderr.strip().splitlines() or ['exit ' + str(r.returncode)])[-1]}")
    return r.stdout


def linger() -> Optional[str]:
    """`yes`/`no` from `loginctl show-user` (does this user's manager start at boot?), or None if unknown."""
    if shutil.which("loginctl") is None:
        return None
    try:
        r = subprocess.run(["loginctl", "show-user", str(os.getuid()), "-p", "Linger"], capture_output=True,
                           text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if r.returncode != 0 or "=" not in r.stdout:
        return None
    return r.stdout.strip().split("=", 1)[1]


def _linger_line() -> str:
    value = linger()
    if value == "yes":
        return "lingering is on: the unit runs at boot, before anyone logs in"
    return ("lingering is off: the unit runs at your first login after a boot; to run it at boot: "
            "`sudo loginctl enable-linger $USER`")


def install(dry_run: bool = False, settings: Optional[UnitSettings] = None) -> list:
    why = systemd_absent()
    if why:
        raise _refusal(why)
    s = settings or unit_settings()
    path = unit_dir() / s.unit_name
    if not dry_run:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(unit_text(s))
        os.replace(tmp, path)
        _systemctl("daemon-reload")
        _systemctl("enable", s.unit_name)
    return [f"wrote {path} (enabled): at boot it runs `nanotui resume --all-unfinished` for runs in {s.base_dir}",
            _linger_line()]


def uninstall(unit_name: str = UNIT_NAME) -> list:
    why = systemd_absent()
    path = unit_dir() / unit_name
    if why and not path.exists():
        raise _refusal(why)
    if not why:
        subprocess.run(["systemctl", "--user", "disable", unit_name], capture_output=True, timeout=30)
    existed = path.exists()
    path.unlink(missing_ok=True)
    if not why:
        _systemctl("daemon-reload")
    return [f"removed {path}" if existed else f"{path} was not installed"]


def status_lines(unit_name: str = UNIT_NAME) -> list:
    why = systemd_absent()
    if why:
        raise _refusal(why)
    path = unit_dir() / unit_name
    r = subprocess.run(["systemctl", "--user", "is-enabled", unit_name], capture_output=True, text=True, timeout=10)
    enabled = r.stdout.strip() or "not installed"
    return [f"{unit_name}: {enabled} ({path}{'' if path.exists() else ', missing'})", _linger_line()]


def resume_unfinished(base_dir: Path) -> list:
    """Resume (newest first) every run `core.resumable.interrupted` picks. [(run_id, ok, one line)]. A run whose
    checkpoint directory a run resumed just before now writes is refused by the usual start checks, and said so."""
    from nanotui.runtime.launch import StartError, resume_run
    from nanotui.runtime.procs import pid_matches
    from nanotui.runtime.rundir import list_runs
    out = []
    for rd in list_runs(base_dir):
        if rd.state_problem():
            continue
        st = rd.read_state()
        why = interrupted(st, rd.supervisor_alive(), pid_matches(st.get("stage_pid"), st.get("stage_pid_created")))
        if why is None:
            continue
        from nanotui.runtime.scripts import parent_of   # a whole script's training stage: its script resumes it
        if parent_of(rd):
            out.append((rd.run_id, True, f"left to its script's run {parent_of(rd)}, which resumes it: {why}"))
            continue
        try:
            pid = resume_run(rd)
            out.append((rd.run_id, True, f"resumed (supervisor pid {pid}): {why}"))
        except StartError as e:
            out.append((rd.run_id, False, f"not resumed: {e}"))
    return out
