"""One cgroup v2 per sandboxed run where a delegated subtree exists (memory.max, pids.max, cgroup.kill); else None."""
from __future__ import annotations

import errno
import os
import time

ENV_VAR = "NANOCHAT_SANDBOX_CGROUP"
NEEDED = ("memory", "pids")
_counter = [0]


def _v2_mount() -> str | None:
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                if right.split(" ", 1)[0] == "cgroup2":
                    return left.split()[4]
    except OSError:
        pass
    return None


def _own_cgroup() -> str | None:
    try:
        with open("/proc/self/cgroup") as f:
            for line in f:
                if line.startswith("0::"):
                    return line[3:].strip()
    except OSError:
        pass
    return None


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _write(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def find_parent() -> tuple[str | None, str]:
    """(the delegated cgroup v2 directory runs are created under, "") or (None, why there is none). It is
    `$NANOCHAT_SANDBOX_CGROUP` when set (an empty cgroup delegated to this user), else this process's own cgroup
    when memory and pids are already enabled for its children and it is writable."""
    mount = _v2_mount()
    explicit = os.environ.get(ENV_VAR)
    if explicit:
        candidate = explicit
    elif mount is None:
        return None, "no cgroup v2 hierarchy is mounted"
    else:
        own = _own_cgroup()
        if own is None:
            return None, "this process is in no cgroup v2"
        candidate = os.path.join(mount, own.lstrip("/")).rstrip("/")
    try:
        available = _read(os.path.join(candidate, "cgroup.controllers")).split()
        enabled = _read(os.path.join(candidate, "cgroup.subtree_control")).split()
    except OSError as e:
        return None, f"{candidate} is not a cgroup v2 directory ({e.strerror})"
    missing = [c for c in NEEDED if c not in available]
    if missing:
        return None, f"{candidate} has no {' and '.join(missing)} controller (cgroup v1 holds them, or not delegated)"
    if not os.access(candidate, os.W_OK):
        return None, f"{candidate} is not delegated to this user"
    off = [c for c in NEEDED if c not in enabled]
    if off:
        try:
            _write(os.path.join(candidate, "cgroup.subtree_control"), " ".join("+" + c for c in off))
        except OSError as e:
            why = ("it holds processes itself; point NANOCHAT_SANDBOX_CGROUP at an empty delegated cgroup"
                   if e.errno == errno.EBUSY else e.strerror)
            return None, f"cannot enable {' and '.join(off)} for the children of {candidate} ({why})"
    return candidate, ""


class RunCgroup:
    """A fresh child cgroup for one run: memory.max (swap off), pids.max, killed whole and removed at the end."""

    def __init__(self, parent: str, memory_max: int, pids_max: int):
        _counter[0] += 1
        self.path = os.path.join(parent, f"nanochat-sandbox-{os.getpid()}-{_counter[0]}")
        os.mkdir(self.path)
        try:
            _write(os.path.join(self.path, "memory.max"), str(memory_max))
            if os.path.exists(os.path.join(self.path, "memory.swap.max")):
                _write(os.path.join(self.path, "memory.swap.max"), "0")
            _write(os.path.join(self.path, "pids.max"), str(pids_max))
        except OSError:
            self.remove()
            raise

    @property
    def procs(self) -> str:
        return os.path.join(self.path, "cgroup.procs")

    def oom_kills(self) -> int:
        try:
            for line in _read(os.path.join(self.path, "memory.events")).splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        except (OSError, ValueError):
            pass
        return 0

    def kill(self) -> None:
        """Every process in the cgroup, at once (cgroup.kill; SIGKILL to each listed pid on kernels before 5.14)."""
        try:
            _write(os.path.join(self.path, "cgroup.kill"), "1")
            return
        except OSError:
            pass
        for _ in range(50):
            try:
                pids = [int(p) for p in _read(self.procs).split()]
            except OSError:
                return
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(pid, 9)
                except OSError:
                    pass
            time.sleep(0.01)

    def remove(self) -> None:
        self.kill()
        for _ in range(100):  # rmdir succeeds once the killed processes are gone
            try:
                os.rmdir(self.path)
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.01)
