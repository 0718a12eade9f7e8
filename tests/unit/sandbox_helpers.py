"""Helpers for the sandbox tests: host directories outside /tmp, a fresh parent process, finding leftover processes."""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

from nanochat.execution import sandbox_problem

REPO_ROOT = Path(__file__).resolve().parents[2]

# Runs in a fresh interpreter: it is "the parent" an attack goes after (its environment holds a secret, its argv a
# marker); prints the result and its own peak RSS.
PARENT_SCRIPT = r'''
import json, os, resource, sys
from nanochat.execution import execute_code
code = open(sys.argv[1]).read().replace("PARENT_PID", str(os.getpid()))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
res = execute_code(code, timeout=float(sys.argv[2]))
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"alive": True, "success": res.success, "stdout": res.stdout, "stderr": res.stderr,
                  "timeout": res.timeout, "truncated": res.output_truncated, "rss_before_kb": before,
                  "rss_after_kb": after, "stdout_len": len(res.stdout)}))
'''

needs_sandbox = pytest.mark.skipif(bool(sandbox_problem()), reason=str(sandbox_problem()))


def marker() -> str:
    return "nanochat-sbx-" + uuid.uuid4().hex[:12]


def sleep_marker() -> str:
    """A `sleep` argument no other process on this machine has: 1000.<random digits>."""
    return f"1000.{uuid.uuid4().int % 10**9:09d}"


def processes_with(text: str) -> list[int]:
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if text.encode() in f.read():
                    found.append(int(pid))
        except OSError:
            pass
    return found


def host_dir():
    """A directory outside /tmp (the sandbox's /tmp is private, so a /tmp path would be hidden trivially):
    under the home directory, like ~/.cache/nanochat and ~/.netrc."""
    home = Path.home()
    base = home / ".cache"
    try:
        base.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix="nanochat-sandbox-test-", dir=base))
    except OSError:
        return Path(tempfile.mkdtemp(prefix="nanochat-sandbox-test-"))


@pytest.fixture
def outside():
    d = host_dir()
    yield d
    shutil.rmtree(d, ignore_errors=True)


def run_in_fresh_parent(code: str, tmp_path: Path, timeout: float = 5.0, env_extra=None, argv_marker="x"):
    """Run execute_code(code) inside a new Python process; returns (its JSON report, its exit status)."""
    path = tmp_path / f"attack-{uuid.uuid4().hex[:8]}.py"
    path.write_text(code)
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), **(env_extra or {}))
    proc = subprocess.run([sys.executable, "-c", PARENT_SCRIPT, str(path), str(timeout), argv_marker],
                          capture_output=True, text=True, env=env, timeout=120)
    report = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.stdout.strip() else None
    return report, proc.returncode, proc.stderr


def meminfo_kib(*fields: str) -> int:
    """Host memory from /proc/meminfo (sum of the named fields, KiB): what a sandbox's unowned pages show up in."""
    total = 0
    with open("/proc/meminfo") as f:
        for line in f:
            name, _, rest = line.partition(":")
            if name in fields:
                total += int(rest.split()[0])
    return total


def pid_namespace_of(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return None


def processes_in_pid_namespace(ns: str) -> list[int]:
    """Host pids of every process in the PID namespace `ns` (a readlink of /proc/PID/ns/pid)."""
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and pid_namespace_of(int(p)) == ns]


def kill_pids(pids) -> None:
    import signal
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
