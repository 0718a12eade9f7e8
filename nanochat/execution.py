"""Sandbox for untrusted model-written code (HumanEval): a separate isolated Python process with a time limit,
a memory limit, a private temporary working directory, no network and no writes outside that directory."""
from __future__ import annotations

import ctypes
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass

CLONE_NEWNET = 0x40000000
CLONE_NEWUSER = 0x10000000
MAX_OUTPUT_CHARS = 20_000

# Runs inside the child (`python -I -c`): reads its job from stdin, locks itself down, then executes the code.
_CHILD_RUNNER = r'''
import builtins, io, json, os, sys
job = json.loads(sys.stdin.readline())
sys.stdin = io.StringIO("")
ROOT = os.path.realpath(job["root"])
os.chdir(ROOT)

def _inside(path):
    try:
        p = os.path.realpath(os.fspath(path) if not isinstance(path, int) else ROOT)
    except Exception:
        return False
    return p == ROOT or p.startswith(ROOT + os.sep)

def _deny(what):
    def refuse(*args, **kwargs):
        raise PermissionError("sandbox: " + what + " is not allowed")
    return refuse

# no network: every way to make a socket raises
import socket
for _name in ("socket", "create_connection", "create_server", "socketpair", "fromfd", "getaddrinfo",
              "gethostbyname", "gethostbyname_ex", "gethostbyaddr"):
    if hasattr(socket, _name):
        setattr(socket, _name, _deny("network access (socket." + _name + ")"))
try:
    import _socket
    _socket.socket = _deny("network access")
except ImportError:
    pass

# no writes outside ROOT
_real_open = builtins.open
def _guarded_open(file, mode="r", *args, **kwargs):
    if any(c in mode for c in "wax+") and not _inside(file):
        raise PermissionError("sandbox: writing outside the sandbox directory: " + str(file))
    return _real_open(file, mode, *args, **kwargs)
builtins.open = _guarded_open
io.open = _guarded_open

_real_os_open = os.open
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
def _guarded_os_open(path, flags, *args, **kwargs):
    if flags & _WRITE_FLAGS and not _inside(path):
        raise PermissionError("sandbox: writing outside the sandbox directory: " + str(path))
    return _real_os_open(path, flags, *args, **kwargs)
os.open = _guarded_os_open

def _path_guard(fn, name, nargs=1):
    def guarded(*args, **kwargs):
        for p in args[:nargs]:
            if not _inside(p):
                raise PermissionError("sandbox: " + name + " outside the sandbox directory: " + str(p))
        return fn(*args, **kwargs)
    return guarded

for _name, _n in (("remove", 1), ("unlink", 1), ("rmdir", 1), ("mkdir", 1), ("makedirs", 1), ("removedirs", 1),
                  ("rename", 2), ("replace", 2), ("renames", 2), ("link", 2), ("symlink", 2), ("chmod", 1),
                  ("chown", 1), ("lchown", 1), ("truncate", 1), ("utime", 1), ("mkfifo", 1), ("mknod", 1)):
    if hasattr(os, _name):
        setattr(os, _name, _path_guard(getattr(os, _name), "os." + _name, _n))
for _name in ("system", "popen", "fork", "forkpty", "kill", "killpg", "execv", "execve", "execl", "execle",
              "execlp", "execlpe", "execvp", "execvpe", "spawnl", "spawnle", "spawnv", "spawnve", "putenv",
              "chroot", "setuid", "setgid", "fchmod", "fchown", "posix_spawn", "posix_spawnp"):
    if hasattr(os, _name):
        setattr(os, _name, _deny("os." + _name))
import shutil
for _name, _n in (("rmtree", 1), ("move", 2), ("copy", 2), ("copy2", 2), ("copyfile", 2), ("copytree", 2),
                  ("chown", 1)):
    setattr(shutil, _name, _path_guard(getattr(shutil, _name), "shutil." + _name, _n))
import subprocess
subprocess.Popen = _deny("subprocess")
sys.modules["ctypes"] = None  # no raw libc calls

exec(compile(job["code"], "<sandboxed>", "exec"), {"__name__": "__main__", "__builtins__": builtins})
'''


@dataclass
class ExecutionResult:
    success: bool
    stdout: str
    stderr: str
    error: str | None = None
    timeout: bool = False
    memory_exceeded: bool = False


def _isolate_network() -> None:
    """Best effort: move the child into a fresh network namespace (loopback down, no routes)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.unshare(CLONE_NEWNET) != 0 and libc.unshare(CLONE_NEWUSER | CLONE_NEWNET) != 0:
            return  # not permitted here: the in-process socket guard still applies
    except Exception:
        pass


def _child_setup(max_memory_bytes: int, cpu_seconds: int):
    def setup():
        os.setsid()  # own process group, so a timeout kills everything it started
        if max_memory_bytes:
            resource.setrlimit(resource.RLIMIT_AS, (max_memory_bytes, max_memory_bytes))
            resource.setrlimit(resource.RLIMIT_DATA, (max_memory_bytes, max_memory_bytes))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 1))
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024 * 1024, 64 * 1024 * 1024))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        _isolate_network()
    return setup


def execute_code(code: str, timeout: float = 5.0, max_memory_bytes: int = 512 * 1024 * 1024) -> ExecutionResult:
    """Run `code` in a sandboxed child Python. success is True when it exits 0 within the limits."""
    with tempfile.TemporaryDirectory(prefix="nanochat_sandbox_") as root:
        env = {"HOME": root, "TMPDIR": root, "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8",
               "PYTHONDONTWRITEBYTECODE": "1", "PYTHONHASHSEED": "0"}
        job = json.dumps({"code": code, "root": root}) + "\n"
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", _CHILD_RUNNER],  # isolated, no site-packages: stdlib only
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=root, env=env,
            preexec_fn=_child_setup(max_memory_bytes, max(1, int(timeout) + 1)), text=True)
        try:
            out, err = proc.communicate(job, timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            out, err = proc.communicate()
            return ExecutionResult(False, out[:MAX_OUTPUT_CHARS], err[:MAX_OUTPUT_CHARS],
                                   error=f"timed out after {timeout:g}s", timeout=True)
        out, err = out[:MAX_OUTPUT_CHARS], err[:MAX_OUTPUT_CHARS]
        if proc.returncode == 0:
            return ExecutionResult(True, out, err)
        memory = "MemoryError" in err or proc.returncode in (-signal.SIGKILL, -signal.SIGSEGV)
        cpu = proc.returncode == -signal.SIGXCPU
        last = err.strip().splitlines()[-1] if err.strip() else f"exit status {proc.returncode}"
        return ExecutionResult(False, out, err, error=("cpu time limit" if cpu else last),
                               timeout=cpu, memory_exceeded=memory)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()
