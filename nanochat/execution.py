"""Runs untrusted model-written code (HumanEval) in a bubblewrap sandbox (nanochat/sandbox.py) with rlimits, a
wall-clock timeout and capped output; refuses (SandboxUnavailable) rather than run it unisolated."""
from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

from nanochat import sandbox
from nanochat.common import UsageError

MAX_OUTPUT_BYTES = 1 << 20  # per stream; the rest is read and dropped, so the parent's memory stays flat
TRUNCATION_MARKER = "\n[nanochat sandbox: output truncated at {cap} bytes; {dropped} more bytes dropped]\n"
TMP_SIZE_BYTES = 64 << 20
MAX_FILE_BYTES = 16 << 20
MAX_PROCESSES = 16
MAX_OPEN_FILES = 256

# Runs first inside the sandbox (`python -I -S -c`): kernel rlimits the code cannot raise again, then the code,
# read from stdin (a memfd), with stdin replaced by /dev/null.
_PROLOGUE = r'''
import os, resource, sys
for name, value in zip(("RLIMIT_AS", "RLIMIT_CPU", "RLIMIT_FSIZE", "RLIMIT_NPROC", "RLIMIT_NOFILE", "RLIMIT_CORE"),
                       map(int, sys.argv[1:7])):
    if value >= 0:
        resource.setrlimit(getattr(resource, name), (value, value))
code = b"".join(iter(lambda: os.read(0, 1 << 20), b""))
null = os.open(os.devnull, os.O_RDONLY)
os.dup2(null, 0)
os.close(null)
exec(compile(code, "<sandboxed>", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
'''


class SandboxUnavailable(UsageError):
    """Kernel isolation cannot be set up here; str() is the one-line reason with the fix."""


@dataclass
class ExecutionResult:
    success: bool
    stdout: str
    stderr: str
    error: str | None = None
    timeout: bool = False
    memory_exceeded: bool = False
    output_truncated: bool = False


_state = {"unsafe": False, "probe": {}}


def set_unsafe_exec(enabled: bool) -> None:
    """Opt out of the kernel sandbox (chat_eval --unsafe-exec): code then runs as a plain child with rlimits only."""
    _state["unsafe"] = bool(enabled)
    if enabled:
        print("WARNING: --unsafe-exec: model-written code runs WITHOUT isolation; it can read and write your files "
              "and use the network", file=sys.stderr, flush=True)


def sandbox_problem() -> str | None:
    """None when the sandbox works on this machine (probed once per bwrap path), else the one-line refusal."""
    bwrap = sandbox.bwrap_path()
    if bwrap is None:
        where = os.environ.get("NANOCHAT_BWRAP")
        found = f"bwrap not found at NANOCHAT_BWRAP={where}" if where else "bubblewrap (bwrap) not found"
        return f"code sandbox unavailable: {found}; {sandbox.INSTALL_HINT}, or pass --unsafe-exec to run it unisolated"
    if bwrap not in _state["probe"]:
        try:
            res = _run_sandboxed(bwrap, "print('sandbox-ok')", 10.0, 256 << 20, 4096)
            ok = res.success and res.stdout.strip() == "sandbox-ok"
            detail = (res.stderr.strip().splitlines() or [res.error or "no output"])[-1]
        except (OSError, subprocess.SubprocessError) as e:  # bwrap not executable, or the root preexec failed
            ok, detail = False, str(e)
        hint = sandbox.UPGRADE_HINT if "Unknown option" in detail else sandbox.USERNS_HINT
        _state["probe"][bwrap] = None if ok else (
            f"code sandbox unavailable: {bwrap} failed ({detail}); {hint}, or pass --unsafe-exec to run it unisolated")
    return _state["probe"][bwrap]


def sandbox_description() -> str:
    """One line for logs: what isolates the code here."""
    if _state["unsafe"]:
        return "UNSAFE: no isolation (--unsafe-exec)"
    problem = sandbox_problem()
    if problem:
        return problem
    _, seccomp = sandbox.seccomp_program()
    bwrap = sandbox.bwrap_path()
    missing = {"--disable-userns", "--size"} - sandbox.bwrap_features(bwrap)
    old = f" (this bwrap lacks {', '.join(sorted(missing))})" if missing else ""
    return f"bubblewrap ({bwrap}), seccomp: {seccomp}{old}"


def execute_code(code: str, timeout: float = 5.0, max_memory_bytes: int = 512 * 1024 * 1024,
                 max_output_bytes: int = MAX_OUTPUT_BYTES) -> ExecutionResult:
    """Run `code` isolated; success is True when it exits 0 within the limits. Raises SandboxUnavailable (never runs
    the code) when the sandbox cannot be set up and --unsafe-exec was not given."""
    if _state["unsafe"]:
        return _run_unsafe(code, timeout, max_memory_bytes, max_output_bytes)
    problem = sandbox_problem()
    if problem:
        raise SandboxUnavailable(problem)
    return _run_sandboxed(sandbox.bwrap_path(), code, timeout, max_memory_bytes, max_output_bytes)


def _limits(timeout: float, max_memory_bytes: int, nproc: int) -> list[str]:
    cpu = max(1, int(timeout) + 1)
    return [str(max_memory_bytes or -1), str(cpu), str(MAX_FILE_BYTES), str(nproc), str(MAX_OPEN_FILES), "0"]


def _code_fd(code: str) -> int:
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("nanochat-code")
    else:  # not Linux: only the --unsafe-exec path gets here
        with tempfile.TemporaryFile() as f:
            fd = os.dup(f.fileno())
    os.write(fd, code.encode("utf-8", "surrogatepass"))
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _run_sandboxed(bwrap: str, code: str, timeout: float, max_memory_bytes: int,
                   max_output_bytes: int) -> ExecutionResult:
    exe, dirs = sandbox.python_paths()
    argv = [exe, "-I", "-S", "-c", _PROLOGUE] + _limits(timeout, max_memory_bytes, MAX_PROCESSES)
    program, _ = sandbox.seccomp_program()
    fds = []
    try:
        seccomp_fd = None
        if program is not None:
            seccomp_fd = os.memfd_create("nanochat-seccomp")
            os.write(seccomp_fd, program)
            os.lseek(seccomp_fd, 0, os.SEEK_SET)
            fds.append(seccomp_fd)
        binds, preexec = [(d, d) for d in dirs], None
        if sandbox.as_root():
            stages = [(d, sandbox.stage_dir(d)) for d in dirs]
            binds = [(stage, d) for d, stage in stages]
            preexec = sandbox.root_preexec(stages)
        code_fd = _code_fd(code)
        fds.append(code_fd)
        proc = subprocess.Popen(sandbox.bwrap_argv(bwrap, binds, seccomp_fd, TMP_SIZE_BYTES, argv),
                                stdin=code_fd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(sandbox.ENV),
                                cwd="/", pass_fds=tuple(fds), preexec_fn=preexec, close_fds=True)
        for fd in fds:
            os.close(fd)
        fds = []
        # Killing bwrap kills the sandbox's pid 1 (--die-with-parent), and with it every process of its namespace.
        return _collect(proc, timeout, max_output_bytes, kill=proc.kill)
    finally:
        for fd in fds:
            os.close(fd)


def _run_unsafe(code: str, timeout: float, max_memory_bytes: int, max_output_bytes: int) -> ExecutionResult:
    with tempfile.TemporaryDirectory(prefix="nanochat_unsafe_") as root:
        env = dict(sandbox.ENV, HOME=root, TMPDIR=root)
        code_fd = _code_fd(code)
        try:
            argv = [sys.executable, "-I", "-S", "-c", _PROLOGUE] + _limits(timeout, max_memory_bytes, -1)
            proc = subprocess.Popen(argv, stdin=code_fd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=root,
                                    env=env, start_new_session=True)
        finally:
            os.close(code_fd)

        def kill():
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                proc.kill()
        result = _collect(proc, timeout, max_output_bytes, kill=kill)
        if proc.poll() is None:
            kill()
        return result


class _Capped:
    def __init__(self, cap: int):
        self.cap, self.chunks, self.size, self.dropped = cap, [], 0, 0

    def add(self, data: bytes) -> None:
        room = self.cap - self.size
        if room > 0:
            self.chunks.append(data[:room])
            self.size += min(room, len(data))
        self.dropped += max(0, len(data) - max(room, 0))

    def text(self) -> str:
        out = b"".join(self.chunks).decode("utf-8", "replace")
        if self.dropped:
            out += TRUNCATION_MARKER.format(cap=self.cap, dropped=self.dropped)
        return out


def _collect(proc: subprocess.Popen, timeout: float, cap: int, kill) -> ExecutionResult:
    """Read both pipes as the child writes (each capped), kill everything at the wall-clock deadline."""
    streams = {proc.stdout: _Capped(cap), proc.stderr: _Capped(cap)}
    sel = selectors.DefaultSelector()
    for f in streams:
        os.set_blocking(f.fileno(), False)
        sel.register(f, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    timed_out = False
    drain_until = None
    try:
        while sel.get_map():
            now = time.monotonic()
            if not timed_out and now >= deadline:
                timed_out = True
                kill()
                drain_until = now + 5.0
            if drain_until is not None and now >= drain_until:
                break  # the killed processes are gone; whatever still holds a pipe open is not ours to wait for
            limit = (drain_until if timed_out else deadline) - now
            for key, _ in sel.select(max(0.0, min(limit, 1.0))):
                try:
                    data = os.read(key.fileobj.fileno(), 1 << 16)
                except BlockingIOError:
                    continue
                if data:
                    streams[key.fileobj].add(data)
                else:
                    sel.unregister(key.fileobj)
            if proc.poll() is not None and drain_until is None:
                drain_until = time.monotonic() + 2.0  # unsafe mode: orphans may keep the pipes open
    finally:
        sel.close()
        proc.stdout.close()
        proc.stderr.close()
    if proc.poll() is None and not timed_out:  # both pipes closed, the process still running
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            timed_out = True
    if proc.poll() is None:
        kill()
    rc = proc.wait()
    out, err = streams[proc.stdout], streams[proc.stderr]
    truncated = bool(out.dropped or err.dropped)
    stdout, stderr = out.text(), err.text()
    if timed_out:
        return ExecutionResult(False, stdout, stderr, error=f"timed out after {timeout:g}s", timeout=True,
                               output_truncated=truncated)
    if rc == 0:
        return ExecutionResult(True, stdout, stderr, output_truncated=truncated)
    sig = -rc if rc < 0 else (rc - 128 if rc > 128 else 0)  # bwrap reports a signal death as 128 + signal
    memory = "MemoryError" in stderr or sig in (signal.SIGKILL, signal.SIGSEGV)
    cpu = sig == signal.SIGXCPU
    last = stderr.strip().splitlines()[-1] if stderr.strip() else f"exit status {rc}"
    return ExecutionResult(False, stdout, stderr, error=("cpu time limit" if cpu else last), timeout=cpu,
                           memory_exceeded=memory, output_truncated=truncated)

