"""Process-group helpers: spawn a stage in its own group, signal/stop the whole group, liveness with pid-reuse guard."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import psutil

STAGEWRAP = Path(__file__).with_name("stagewrap.py")


def create_time(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except (psutil.Error, ValueError, TypeError):
        return None


def pid_matches(pid: int | None, created: float | None) -> bool:
    """True when `pid` is alive (not a zombie) and, if `created` is given, is the same process (no pid reuse)."""
    if not pid:
        return False
    try:
        p = psutil.Process(int(pid))
        if p.status() == psutil.STATUS_ZOMBIE:
            return False
        return created is None or abs(p.create_time() - float(created)) < 0.05
    except (psutil.Error, ValueError, TypeError):
        return False


def spawn_stage(argv: list[str], *, env: dict, cwd: str | None, log_path: Path, exit_path: Path,
                python: str | None = None) -> subprocess.Popen:
    """Start `argv` under the exit-code wrapper, in a new session/process group, output appended to `log_path`.

    The child writes the log itself (stdout and stderr share one file), so it never depends on the supervisor
    reading a pipe: the supervisor may die and a new one re-adopts by tailing the file and waiting for `exit_path`."""
    import sys
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        return subprocess.Popen(
            [python or sys.executable, str(STAGEWRAP), str(exit_path), "--", *argv],
            stdin=subprocess.DEVNULL, stdout=log_fd, stderr=subprocess.STDOUT,
            env=env, cwd=cwd or None, start_new_session=True, close_fds=True)
    finally:
        os.close(log_fd)


def signal_group(pgid: int, sig: int) -> bool:
    """Send `sig` to every process of group `pgid`; False when the group is gone."""
    try:
        os.killpg(pgid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def group_pids(pgid: int) -> list[int]:
    """Live (non-zombie) processes whose process group is `pgid`."""
    out = []
    for p in psutil.process_iter(["pid", "status"]):
        try:
            if p.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(p.pid) == pgid:
                out.append(p.pid)
        except (ProcessLookupError, psutil.Error, OSError):
            continue
    return out


def group_alive(pgid: int | None) -> bool:
    return bool(pgid) and bool(group_pids(int(pgid)))


def tree_pids(pid: int) -> list[int]:
    """`pid` and all its descendants (what the GPU panel attributes to the run)."""
    try:
        p = psutil.Process(pid)
        return [p.pid] + [c.pid for c in p.children(recursive=True)]
    except psutil.Error:
        return []


def stop_group(pgid: int, timeout: float = 60.0, poll: float = 0.1) -> str:
    """SIGTERM the group, wait up to `timeout` s, then SIGKILL. Returns 'gone', 'terminated' or 'killed'."""
    if not signal_group(pgid, signal.SIGTERM):
        return "gone"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not group_alive(pgid):
            return "terminated"
        time.sleep(poll)
    signal_group(pgid, signal.SIGKILL)
    return "killed"


# ---- whole process trees (torchrun starts its ranks in their own sessions: a group signal misses them) -------
def tree_snapshot(pid: int | None) -> list[tuple[int, float]]:
    """(pid, create_time) of `pid` and every descendant, whatever session or group they are in."""
    if not pid:
        return []
    try:
        root = psutil.Process(int(pid))
        procs = [root] + root.children(recursive=True)
    except (psutil.Error, ValueError, TypeError):
        return []
    out = []
    for p in procs:
        try:
            if p.status() != psutil.STATUS_ZOMBIE:
                out.append((p.pid, p.create_time()))
        except psutil.Error:
            continue
    return out


def alive_of(snapshot) -> list[tuple[int, float]]:
    """The members of a snapshot that still run (same pid *and* create time: no pid reuse, no zombies)."""
    return [(pid, ct) for pid, ct in snapshot if pid_matches(pid, ct)]


def merge_snapshots(*snaps) -> list[tuple[int, float]]:
    seen, out = set(), []
    for snap in snaps:
        for pid, ct in snap or ():
            key = (int(pid), round(float(ct), 2))
            if key not in seen:
                seen.add(key)
                out.append((int(pid), float(ct)))
    return out


def kill_snapshot(snapshot, sig: int = signal.SIGKILL) -> list[int]:
    """Send `sig` to every still-running member of a snapshot; returns the pids signalled."""
    hit = []
    for pid, ct in alive_of(snapshot):
        try:
            os.kill(pid, sig)
            hit.append(pid)
        except (ProcessLookupError, PermissionError):
            continue
    return hit


def stop_tree(pgid: int, snapshot=(), timeout: float = 60.0, poll: float = 0.1) -> str:
    """Stop a stage without its supervisor: ONE SIGTERM to its group (torchrun forwards it to its ranks), wait up
    to `timeout` s for the group and every process of `snapshot` + the current tree, then SIGKILL them all and
    verify. Returns 'gone', 'terminated', 'killed' or 'survived' (something outlived SIGKILL)."""
    snap = merge_snapshots(snapshot, tree_snapshot(pgid))
    if not signal_group(pgid, signal.SIGTERM) and not alive_of(snap):
        return "gone"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        snap = merge_snapshots(snap, tree_snapshot(pgid))
        if not group_alive(pgid) and not alive_of(snap):
            return "terminated"
        time.sleep(poll)
    for _ in range(50):
        signal_group(pgid, signal.SIGKILL)
        kill_snapshot(snap)
        time.sleep(poll)
        if not group_alive(pgid) and not alive_of(snap):
            return "killed"
    return "survived"


def finish_tree(pgid: int, snapshot, timeout: float, signalled: bool, poll: float = 0.1) -> list[int]:
    """After a stage's wrapper ended, its leftovers (`snapshot` members still running, and the group): SIGTERM
    unless they were `signalled` already (a second SIGTERM is what kills a checkpoint in progress), up to
    `timeout` s to exit, then SIGKILL until none is left. Returns the pids that survived even SIGKILL."""
    left = alive_of(snapshot)
    if not signalled:
        signal_group(pgid, signal.SIGTERM)
        kill_snapshot(left, signal.SIGTERM)
    deadline = time.monotonic() + max(0.0, timeout)
    while (alive_of(left) or group_alive(pgid)) and time.monotonic() < deadline:
        time.sleep(poll)
    for _ in range(50):
        if not alive_of(left) and not group_alive(pgid):
            return []
        signal_group(pgid, signal.SIGKILL)
        kill_snapshot(left)
        time.sleep(poll)
    return [p for p, _ in alive_of(left)]
