"""Runs untrusted model-written code (HumanEval) in a bubblewrap sandbox (nanochat/sandbox.py) with rlimits, a
wall-clock timeout and capped output; refuses (SandboxUnavailable) rather than run it unisolated."""
from __future__ import annotations

import os
import re
import select
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

from nanochat import sandbox, sandbox_cgroup
from nanochat.common import UsageError

MAX_OUTPUT_BYTES = 1 << 20  # per stream; the rest is read and dropped, so the parent's memory stays flat
TRUNCATION_MARKER = "\n[nanochat sandbox: output truncated at {cap} bytes; {dropped} more bytes dropped]\n"
TMP_SIZE_BYTES = 64 << 20
TMP_MAX_INODES = 4096  # --size caps a tmpfs's blocks, not its inodes (each costs ~1 KiB of kernel memory)
MAX_FILE_BYTES = 16 << 20
MAX_PROCESSES = 16
MAX_OPEN_FILES = 256
_RLIMITS = ("RLIMIT_AS", "RLIMIT_CPU", "RLIMIT_FSIZE", "RLIMIT_NPROC", "RLIMIT_NOFILE", "RLIMIT_CORE",
            "RLIMIT_MSGQUEUE")

# Runs first inside the sandbox (`python -I -S -c`), as its pid 1: kernel rlimits the code cannot raise again, then
# the code, read from stdin (a memfd), with stdin replaced by /dev/null. Sandboxed (a status fd is given), pid 1 makes
# itself undumpable (the code cannot open /proc/1/mem or /proc/1/fd), runs the code in a child, reaps every orphan and
# writes how the code's process ended ("exit N" or "signal N", and its CPU seconds) where only pid 1 can write.
_PROLOGUE = r'''
import os, resource, signal, sys
status_fd = int(sys.argv[1])
for name, value in zip(%r, map(int, sys.argv[2:])):
    if value >= 0:
        resource.setrlimit(getattr(resource, name), (value, value))
code = b"".join(iter(lambda: os.read(0, 1 << 20), b""))
null = os.open(os.devnull, os.O_RDONLY)
os.dup2(null, 0)
os.close(null)
if status_fd >= 0:
    import _ctypes  # prctl without importing ctypes (which costs tens of ms per run)
    class c_int(_ctypes._SimpleCData):
        _type_ = "i"
    class Func(_ctypes.CFuncPtr):
        _flags_, _restype_ = _ctypes.FUNCFLAG_CDECL, c_int
    prctl = Func(_ctypes.dlsym(_ctypes.dlopen(None, 0), "prctl"))
    prctl(4, 0, 0, 0, 0)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    import gc
    gc.freeze()  # the child then copies fewer of these pages on write
    child = os.fork()
    if child:
        while True:
            pid, status, usage = os.wait4(-1, 0)
            if pid == child:
                break
        how, num = ("signal", os.WTERMSIG(status)) if os.WIFSIGNALED(status) else ("exit", os.WEXITSTATUS(status))
        os.write(status_fd, f"{how} {num} {usage.ru_utime + usage.ru_stime:.3f}\n".encode())
        os._exit(0)
    os.close(status_fd)
    prctl(4, 1, 0, 0, 0)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    del prctl, Func, c_int, _ctypes, gc, child
    status = 0
    try:
        exec(compile(code, "<sandboxed>", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
    except SystemExit as e:  # what the interpreter's own exit would do, without its teardown (copy-on-write costly)
        if isinstance(e.code, int) or e.code is None:
            status = (e.code or 0) & 0xFF
        else:
            print(e.code, file=sys.stderr)
            status = 1
    except BaseException:
        sys.excepthook(*sys.exc_info())
        status = 1
    if "threading" in sys.modules:
        sys.modules["threading"]._shutdown()
    import atexit
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            status = status or 120
    os._exit(status)
exec(compile(code, "<sandboxed>", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
''' % (_RLIMITS,)

# What the availability probe prints from inside; each field must show its layer in force.
_PROBE = ("import os\nst = dict(l.split(':', 1) for l in open('/proc/self/status') if ':' in l)\n"
          "net = [l.split(':')[0].strip() for l in open('/proc/net/dev').readlines()[2:]]\n"
          "print('sandbox-ok', *(st.get(k, '?').strip() for k in ('Seccomp', 'NoNewPrivs', 'CapEff')), os.getuid(),"
          " os.getppid(), os.path.exists('/etc/passwd'), ','.join(sorted(net)) or '-')")
_PROBE_EXPECT = (("seccomp filter", {"2"}), ("no_new_privs", {"1"}), ("capability drop", {"0000000000000000"}),
                 ("uid 65534", {str(sandbox.SANDBOX_UID)}), ("PID namespace", {"1"}),
                 ("mount namespace (/etc hidden)", {"False"}), ("network namespace", {"lo", "-"}))


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
_UNSAFE_HINT = "or pass --unsafe-exec to run it unisolated"
SECCOMP_HINT = "install libseccomp (Debian/Ubuntu: sudo apt-get install libseccomp2)"


def set_unsafe_exec(enabled: bool) -> None:
    """Opt out of the kernel sandbox (chat_eval --unsafe-exec): code then runs as a plain child with rlimits only."""
    _state["unsafe"] = bool(enabled)
    if enabled:
        print("WARNING: --unsafe-exec: model-written code runs WITHOUT isolation; it can read and write your files "
              "and use the network", file=sys.stderr, flush=True)


def _cgroup_parent() -> tuple[str | None, str]:
    key = ("cgroup", os.environ.get(sandbox_cgroup.ENV_VAR))
    if key not in _state:
        _state[key] = sandbox_cgroup.find_parent()
    return _state[key]


def sandbox_problem() -> str | None:
    """None when every layer works here (bubblewrap trusted, seccomp filter, limits; probed once per bwrap), else the
    one-line refusal naming the fix."""
    problem = sandbox.bwrap_problem()
    if problem:
        return f"code sandbox unavailable: {problem}, {_UNSAFE_HINT}"
    program, why = sandbox.seccomp_program()
    if program is None:
        return f"code sandbox unavailable: no seccomp filter ({why}); {SECCOMP_HINT}, {_UNSAFE_HINT}"
    parent, why = _cgroup_parent()
    if parent is None and os.environ.get(sandbox_cgroup.ENV_VAR):
        return (f"code sandbox unavailable: {sandbox_cgroup.ENV_VAR}: {why}; point it at a delegated cgroup v2 "
                f"directory or unset it, {_UNSAFE_HINT}")
    bwrap = sandbox.bwrap_path()
    if bwrap not in _state["probe"]:
        _state["probe"][bwrap] = _probe(bwrap)
    return _state["probe"][bwrap]


def _probe(bwrap: str) -> str | None:
    try:
        res = _run_sandboxed(bwrap, _PROBE, 10.0, 256 << 20, 4096)
    except (OSError, subprocess.SubprocessError) as e:  # bwrap not executable, or the preexec failed
        res = ExecutionResult(False, "", "", error=str(e))
    fields = res.stdout.split()
    if res.success and fields[:1] == ["sandbox-ok"] and len(fields) == 1 + len(_PROBE_EXPECT):
        missing = [name for (name, ok), got in zip(_PROBE_EXPECT, fields[1:]) if got not in ok]
        if not missing:
            return None
        fix = SECCOMP_HINT if missing == ["seccomp filter"] else f"use the system bubblewrap ({sandbox.INSTALL_HINT})"
        return (f"code sandbox unavailable: {bwrap} does not isolate ({', '.join(missing)} missing); {fix}, "
                f"{_UNSAFE_HINT}")
    detail = (res.stderr.strip().splitlines() or [res.error or "no output"])[-1]
    hint = sandbox.UPGRADE_HINT if "Unknown option" in detail else sandbox.USERNS_HINT
    return f"code sandbox unavailable: {bwrap} failed ({detail}); {hint}, {_UNSAFE_HINT}"


def limits_description() -> str:
    """One line: what bounds the sandbox's memory and processes here (a cgroup v2, or the rlimit fallback)."""
    parent, why = _cgroup_parent()
    if parent:
        return f"cgroup v2 under {parent} (memory.max, pids.max {MAX_PROCESSES}, cgroup.kill)"
    tmp = (f"/tmp {TMP_SIZE_BYTES >> 20} MiB and {TMP_MAX_INODES} inodes" if sandbox.as_root()
           else "/tmp read-only (an inode cap needs root or a cgroup)")
    return (f"rlimit fallback: {MAX_PROCESSES} processes, each within the address-space limit; {tmp}; no SysV IPC, "
            f"message queues or memfds; killed by host pid (no delegated cgroup v2: {why})")


def sandbox_description() -> str:
    """One line for logs: what isolates the code here."""
    if _state["unsafe"]:
        return "UNSAFE: no isolation (--unsafe-exec)"
    problem = sandbox_problem()
    if problem:
        return problem
    bwrap = sandbox.bwrap_path()
    missing = {"--disable-userns", "--size"} - sandbox.bwrap_features(bwrap)
    old = f" (this bwrap lacks {', '.join(sorted(missing))})" if missing else ""
    return f"bubblewrap ({bwrap}), seccomp: on{old}; limits: {limits_description()}"


def execute_code(code: str, timeout: float = 5.0, max_memory_bytes: int = 512 * 1024 * 1024,
                 max_output_bytes: int = MAX_OUTPUT_BYTES) -> ExecutionResult:
    """Run `code` isolated; success is True when its process exits 0 within the limits. Raises SandboxUnavailable
    (never runs the code) when any layer of the sandbox is missing and --unsafe-exec was not given."""
    if _state["unsafe"]:
        return _run_unsafe(code, timeout, max_memory_bytes, max_output_bytes)
    problem = sandbox_problem()
    if problem:
        raise SandboxUnavailable(problem)
    return _run_sandboxed(sandbox.bwrap_path(), code, timeout, max_memory_bytes, max_output_bytes)


def _cpu_seconds(timeout: float) -> int:
    return max(1, int(timeout) + 1)


def _limits(timeout: float, max_memory_bytes: int, nproc: int) -> list[str]:
    values = (max_memory_bytes or -1, _cpu_seconds(timeout), MAX_FILE_BYTES, nproc, MAX_OPEN_FILES, 0,
              0 if nproc >= 0 else -1)
    return [str(v) for v in values]


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
    exe, paths, hide = sandbox.python_paths()
    program, why = sandbox.seccomp_program()
    if program is None:
        raise SandboxUnavailable(f"code sandbox unavailable: no seccomp filter ({why}); {SECCOMP_HINT}")
    limits = _limits(timeout, max_memory_bytes, MAX_PROCESSES)
    outer = {name: int(v) for name, v in zip(_RLIMITS, limits) if name != "RLIMIT_NPROC"}  # NPROC counts per uid
    parent, _ = _cgroup_parent()
    cgroup, proc, fds = None, None, []
    try:
        seccomp_fd = os.memfd_create("nanochat-seccomp")
        fds.append(seccomp_fd)
        os.write(seccomp_fd, program)
        os.lseek(seccomp_fd, 0, os.SEEK_SET)
        status_r, status_w = os.pipe()
        info_r, info_w = os.pipe()
        fds += [status_w, info_w]
        if parent:
            cgroup = sandbox_cgroup.RunCgroup(parent, max_memory_bytes or (1 << 62), MAX_PROCESSES + 1)
        binds, stages, tmpfs = [(p, p) for p in paths], [], None
        tmp = ("tmpfs", TMP_SIZE_BYTES) if cgroup else ("ro-tmpfs", TMP_SIZE_BYTES)
        if sandbox.as_root():
            stages = [(p, sandbox.stage_path(p)) for p in paths]
            binds = [(stage, p) for p, stage in stages]
            tmp = ("bind", sandbox.tmpfs_stage())
            tmpfs = (tmp[1], f"size={TMP_SIZE_BYTES},nr_inodes={TMP_MAX_INODES},mode=0700,"
                             f"uid={sandbox.SANDBOX_UID},gid={sandbox.SANDBOX_UID}")
        preexec = None  # without one, subprocess can spawn bwrap without copying this (maybe large) process
        if cgroup or sandbox.as_root():  # the outer limits are a second layer: pid 1 sets them all inside
            preexec = sandbox.make_preexec(outer, cgroup.procs if cgroup else None, sandbox.as_root(), stages, tmpfs)
        argv = [exe, "-I", "-S", "-c", _PROLOGUE, str(status_w)] + limits
        code_fd = _code_fd(code)
        fds.append(code_fd)
        proc = subprocess.Popen(sandbox.bwrap_argv(bwrap, binds, hide, seccomp_fd, info_w, tmp, argv),
                                stdin=code_fd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(sandbox.ENV),
                                cwd="/", pass_fds=tuple(fds), preexec_fn=preexec, close_fds=True)
        for fd in fds:
            os.close(fd)
        fds = [status_r, info_r]
        killer = _Killer(proc, info_r, cgroup)
        out = _collect(proc, timeout, max_output_bytes, kill=killer)
        status = _read_available(status_r).split()
        return _verdict(out, status, cgroup.oom_kills() if cgroup else 0, timeout)
    finally:
        if proc is not None and proc.poll() is None:
            _Killer(proc, fds[-1] if fds else -1, cgroup)()
            proc.wait()
        if cgroup is not None:
            cgroup.remove()
        for fd in fds:
            os.close(fd)


def _read_available(fd: int, wait: float = 0.0) -> str:
    """What is in the pipe now (after `wait` seconds at most for the first bytes), without blocking on its writer."""
    data = b""
    os.set_blocking(fd, False)
    ready, _, _ = select.select([fd], [], [], wait)
    while ready:
        try:
            chunk = os.read(fd, 4096)
        except BlockingIOError:
            break
        if not chunk:
            break
        data += chunk
    return data.decode("utf-8", "replace")


class _Killer:
    """The timeout's kill: the run's cgroup at once; the sandbox's pid 1 by host pid (bwrap's --info-fd), which
    takes its whole PID namespace with it (a pidfd, checked to be bwrap's child, so a reused pid is never hit);
    then bwrap."""

    def __init__(self, proc: subprocess.Popen, info_fd: int, cgroup):
        self.proc, self.info_fd, self.cgroup = proc, info_fd, cgroup

    def __call__(self) -> None:
        if self.cgroup is not None:
            self.cgroup.kill()
        if self.info_fd >= 0 and self.proc.poll() is None:
            m = re.search(r'"child-pid"\s*:\s*(\d+)', _read_available(self.info_fd, wait=1.0))
            if m:
                _kill_child_of(int(m.group(1)), self.proc.pid)
        try:
            self.proc.kill()
        except OSError:
            pass


def _kill_child_of(pid: int, parent: int) -> None:
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return
    try:
        with open(f"/proc/{pid}/status") as f:
            ppid = next((int(line.split()[1]) for line in f if line.startswith("PPid:")), None)
        if ppid == parent:
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    except OSError:
        pass
    finally:
        os.close(pidfd)


def _run_unsafe(code: str, timeout: float, max_memory_bytes: int, max_output_bytes: int) -> ExecutionResult:
    with tempfile.TemporaryDirectory(prefix="nanochat_unsafe_") as root:
        env = dict(sandbox.ENV, HOME=root, TMPDIR=root)
        code_fd = _code_fd(code)
        try:
            argv = [sys.executable, "-I", "-S", "-c", _PROLOGUE, "-1"] + _limits(timeout, max_memory_bytes, -1)
            proc = subprocess.Popen(argv, stdin=code_fd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=root,
                                    env=env, start_new_session=True)
        finally:
            os.close(code_fd)

        def kill():
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                proc.kill()
        out = _collect(proc, timeout, max_output_bytes, kill=kill)
        if proc.poll() is None:
            kill()
        rc = out[0]  # a plain child: a negative status is a signal, unambiguously
        return _verdict(out, ["signal", str(-rc), "0"] if rc < 0 else ["exit", str(rc), "0"], 0, timeout)


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


def _collect(proc: subprocess.Popen, timeout: float, cap: int, kill) -> tuple[int, str, str, bool, bool]:
    """Read both pipes as the child writes (each capped), kill everything at the wall-clock deadline; returns
    (exit status, stdout, stderr, truncated, timed out)."""
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
    return rc, out.text(), err.text(), bool(out.dropped or err.dropped), timed_out


def _verdict(collected: tuple, status: list[str], oom_kills: int, timeout: float) -> ExecutionResult:
    """The result as it happened: `status` is how the code's process ended, from pid 1 ("exit N" / "signal N" and its
    CPU seconds; empty when pid 1 itself was killed). Only the kernel's doing counts as a limit: the wall clock, an
    OOM kill in the run's cgroup, CPU time spent up to RLIMIT_CPU, a MemoryError; the code's own exit 137 is not."""
    rc, stdout, stderr, truncated, timed_out = collected
    last = stderr.strip().splitlines()[-1] if stderr.strip() else ""
    if timed_out:
        return ExecutionResult(False, stdout, stderr, error=f"timed out after {timeout:g}s", timeout=True,
                               output_truncated=truncated)
    if oom_kills:
        return ExecutionResult(False, stdout, stderr, error="memory limit: killed by the cgroup's OOM killer",
                               memory_exceeded=True, output_truncated=truncated)
    if len(status) != 3:
        return ExecutionResult(False, stdout, stderr, error=last or f"sandbox ended without a status (exit {rc})",
                               output_truncated=truncated)
    how, num, cpu = status[0], int(status[1]), float(status[2])
    if how == "exit" and num == 0:
        return ExecutionResult(True, stdout, stderr, output_truncated=truncated)
    if how == "signal":
        if num == signal.SIGXCPU or (num == signal.SIGKILL and cpu >= _cpu_seconds(timeout) - 0.05):
            return ExecutionResult(False, stdout, stderr, error="cpu time limit", timeout=True,
                                   output_truncated=truncated)
        name = signal.Signals(num).name if num in signal.Signals._value2member_map_ else "?"
        return ExecutionResult(False, stdout, stderr, error=f"killed by signal {num} ({name})",
                               output_truncated=truncated)
    memory = last.startswith("MemoryError")
    return ExecutionResult(False, stdout, stderr, error=last or f"exit status {num}", memory_exceeded=memory,
                           output_truncated=truncated)
