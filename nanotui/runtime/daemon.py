"""The supervisor as a detached process: spawning it, its exclusive lock on the run, output that never raises,
and its command line (`python -m nanotui.runtime.supervisor RUN_DIR [--resume [--step S] [--device-bs B]]`)."""
from __future__ import annotations

import argparse
import fcntl
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from nanotui.runtime.rundir import RunDir


class SupervisorBusy(RuntimeError):
    """Another supervisor holds this run's lock."""


LOCK_SETTLE_S = 1.0   # how long a start waits out other processes' momentary status probes of its lock


def acquire_lock(rd: RunDir) -> int:
    """flock supervisor.lock; returns the fd to keep open for the supervisor's lifetime."""
    fd = os.open(rd.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    # `supervisor_alive()` probes (a dashboard's poll, `nanotui status`, a script's launcher) hold a shared flock
    # for microseconds; only a flock still held after LOCK_SETTLE_S belongs to a live supervisor
    deadline = time.monotonic() + LOCK_SETTLE_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() < deadline:
                time.sleep(0.01)
                continue
        os.close(fd)
        pid = rd.read_state().get("supervisor_pid")
        raise SupervisorBusy(f"run {rd.run_id} already has a supervisor (pid {pid}); "
                             f"use `nanotui attach {rd.run_id}` or `nanotui stop {rd.run_id}`") from None
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
    except OSError:
        pass  # the pid in the lock file is a courtesy; the flock is what counts
    return fd


def spawn_supervisor(rd: RunDir, extra_args: list[str] = (), python: str | None = None) -> subprocess.Popen:
    """Start a detached supervisor for `rd`: new session, no terminal, stdio to run_dir/supervisor.log."""
    env = dict(os.environ)
    pkg_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = pkg_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    log_fd = os.open(rd.supervisor_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        return subprocess.Popen([python or sys.executable, "-m", "nanotui.runtime.supervisor", str(rd.path),
                                 *extra_args],
                                stdin=subprocess.DEVNULL, stdout=log_fd, stderr=subprocess.STDOUT, env=env,
                                cwd=str(rd.path), start_new_session=True, close_fds=True)
    finally:
        os.close(log_fd)


class _SafeStream:
    """stdout/stderr (supervisor.log) that never raise: a full disk must not kill the supervisor through a print."""

    def __init__(self, stream):
        self._s = stream

    def write(self, text):
        try:
            return self._s.write(text)
        except (OSError, ValueError):
            return len(text)

    def flush(self):
        try:
            self._s.flush()
        except (OSError, ValueError):
            pass

    def __getattr__(self, name):
        return getattr(self._s, name)


def run_main(supervisor_cls, argv: list[str] | None = None) -> int:
    """The supervisor process: parse its command line, take the run's lock, run `supervisor_cls` until the run
    ends. Exit 2 (one `error:` line in supervisor.log) when the run cannot be supervised."""
    sys.stdout, sys.stderr = _SafeStream(sys.stdout), _SafeStream(sys.stderr)
    ap = argparse.ArgumentParser(prog="nanotui-supervisor")
    ap.add_argument("run_dir")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--step", type=int)
    ap.add_argument("--device-bs", type=int)
    a = ap.parse_args(argv)
    rd = RunDir(a.run_dir)
    try:
        rd.read_plan()
    except Exception as e:
        print(f"error: {e}", flush=True)
        return 2
    problem = rd.state_problem()
    if problem:  # resuming from a blank state would silently restart the pipeline at its first stage
        print(f"error: run {rd.run_id}: {problem}; restore that file or start a new run", flush=True)
        return 2
    try:
        lock_fd = acquire_lock(rd)
    except SupervisorBusy as e:
        print(f"error: {e}", flush=True)
        return 2
    # SIGHUP only means a terminal went away (SSH drop): the run goes on. SIGINT is for foreground jobs.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sup = supervisor_cls(rd, resume=a.resume, resume_step=a.step, resume_device_bs=a.device_bs)

    def on_term(signum, frame):  # logout / shutdown: stop the stage cleanly (it checkpoints), then exit
        sup.on_signal(signum)
    signal.signal(signal.SIGTERM, on_term)
    print(f"supervisor pid {os.getpid()} for run {rd.run_id}", flush=True)
    try:
        return sup.run()
    finally:
        os.close(lock_fd)
