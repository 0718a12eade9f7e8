"""Second-round attacks on the sandbox's limits, each checked from outside: every process in it (its pid 1 included)
under the limits and dead at the timeout, no memory outside the processes (SysV IPC, message queues, memfds, tmpfs
inodes) growing the host's, and exit reasons reported as they happened."""
import os
import threading
import time

import pytest

from nanochat import execution
from nanochat.execution import execute_code
from sandbox_helpers import (kill_pids, meminfo_kib, needs_sandbox, pid_namespace_of, processes_in_pid_namespace,
                             processes_with, sleep_marker)

pytestmark = needs_sandbox

# x86_64 machine code: prctl(PR_SET_PDEATHSIG, 0), then pause() forever. Written over the sandbox's pid 1 at the
# instruction after the wait4 it sleeps in, it runs when the code exits: pid 1 then outlives the kill of bwrap.
_TAKEOVER = "bf01000000" "31f6" "b89d000000" "0f05" "b822000000" "0f05" "ebf7"


def _gone(pids_of, tries: int = 30) -> bool:
    for _ in range(tries):
        if not pids_of():
            return True
        time.sleep(0.1)
    return False


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="the takeover code is x86_64 machine code")
def test_code_that_takes_over_pid_1_does_not_outlive_the_timeout():
    tag = sleep_marker()
    code = ("import os\n"
            "print('pidns', os.readlink('/proc/self/ns/pid'), flush=True)\n"
            "if os.fork() == 0:\n"
            f"    os.execv('/bin/sleep', ['sleep', '{tag}'])\n"
            "try:\n"
            "    pc = int(open('/proc/1/syscall').read().split()[-1], 16)\n"
            "    with open('/proc/1/mem', 'r+b', buffering=0) as mem:\n"
            "        mem.seek(pc)\n"
            f"        mem.write(bytes.fromhex('{_TAKEOVER}'))\n"
            "    print('took over pid 1', flush=True)\n"
            "except OSError as e:\n"
            "    print('no takeover', e, flush=True)\n")
    res = execute_code(code, timeout=2.0)
    ns = next(line.split()[1] for line in res.stdout.splitlines() if line.startswith("pidns"))
    try:
        assert _gone(lambda: processes_with(tag)), f"sandboxed sleep outlived the timeout ({res.stdout!r})"
        assert _gone(lambda: processes_in_pid_namespace(ns)), "the sandbox's pid 1 outlived the timeout"
    finally:
        kill_pids(processes_in_pid_namespace(ns))
    assert "took over pid 1" not in res.stdout, res.stdout


def test_the_timeout_kill_does_not_rely_on_the_parent_death_signal(monkeypatch):
    """Without bwrap's --die-with-parent (what a taken-over pid 1 can clear), the kill still reaches everything."""
    from nanochat import sandbox
    real = sandbox.bwrap_argv
    monkeypatch.setattr(sandbox, "bwrap_argv", lambda *a, **k: [x for x in real(*a, **k) if x != "--die-with-parent"])
    tag = sleep_marker()
    code = ("import os, time\nprint('pidns', os.readlink('/proc/self/ns/pid'), flush=True)\nfor _ in range(3):\n"
            f"    if os.fork() == 0:\n        os.execv('/bin/sleep', ['sleep', '{tag}'])\ntime.sleep(100)")
    res = execute_code(code, timeout=1.5)
    ns = next(line.split()[1] for line in res.stdout.splitlines() if line.startswith("pidns"))
    try:
        assert res.timeout
        assert _gone(lambda: processes_in_pid_namespace(ns)), "processes of the sandbox outlived the timeout"
    finally:
        kill_pids(processes_in_pid_namespace(ns))


def _limits_of(pid: int) -> dict:
    out = {}
    with open(f"/proc/{pid}/limits") as f:
        for line in f.readlines()[1:]:
            name = line[:26].strip()
            out[name] = line[26:47].strip()
    return out


def test_every_process_in_the_sandbox_runs_under_the_limits():
    tag = sleep_marker()
    code = (f"import os, time\nif os.fork() == 0:\n    os.execv('/bin/sleep', ['sleep', '{tag}'])\n"
            "time.sleep(30)")
    box = {}
    worker = threading.Thread(target=lambda: box.setdefault("res", execute_code(code, timeout=3.0,
                                                                                max_memory_bytes=256 << 20)))
    worker.start()
    seen = {}
    try:
        deadline = time.monotonic() + 2.5
        while time.monotonic() < deadline and not seen:
            for pid in processes_with(tag):
                ns = pid_namespace_of(pid)
                if ns:
                    seen = {p: _limits_of(p) for p in processes_in_pid_namespace(ns)}
            time.sleep(0.05)
    finally:
        worker.join()
    assert len(seen) >= 3, seen  # pid 1, the code, its sleep
    for pid, limits in seen.items():
        assert limits["Max address space"] == str(256 << 20), (pid, limits)
        assert limits["Max processes"] == str(execution.MAX_PROCESSES), (pid, limits)
        assert limits["Max open files"] == str(execution.MAX_OPEN_FILES), (pid, limits)
        assert limits["Max cpu time"] != "unlimited", (pid, limits)
    assert box["res"].timeout


# ---- memory that belongs to no process -------------------------------------------------------------------------

_LIBC = "import ctypes, os, time\nlibc = ctypes.CDLL(None, use_errno=True)\nlibc.shmat.restype = ctypes.c_void_p\n"

_ATTACKS = {
    # 6 segments of 64 MiB attached, filled and detached one at a time: 384 MiB under a 128 MiB address space
    "sysv_shm": (("Shmem",), _LIBC + "made = 0\nfor _ in range(6):\n"
                 "    sid = libc.shmget(0, 64 << 20, 0o1600)\n    if sid < 0:\n        break\n"
                 "    addr = libc.shmat(sid, None, 0)\n    if addr in (None, ctypes.c_void_p(-1).value):\n"
                 "        break\n    ctypes.memset(addr, 1, 64 << 20)\n    libc.shmdt(ctypes.c_void_p(addr))\n"
                 "    made += 64\n"),
    # 3,000 queues of 16 KiB each (two 8 KiB messages): ~48 MiB of kernel memory
    "message_queues": (("SUnreclaim",), _LIBC + "made = 0\nmsg = ctypes.create_string_buffer(8 + 8192)\n"
                       "msg[0] = 1\nfor _ in range(3000):\n    q = libc.msgget(0, 0o1600)\n    if q < 0:\n"
                       "        break\n    for _ in range(2):\n        libc.msgsnd(q, msg, 8192, 0o4000)\n"
                       "    made += 1\n"),
    # ten 15 MiB memfds, kept open: 150 MiB of shared memory
    "memfd": (("Shmem",), "import os, time\nfds, made = [], 0\nfor i in range(10):\n    try:\n"
              "        fd = os.memfd_create(f'm{i}')\n        os.write(fd, b'x' * (15 << 20))\n"
              "    except OSError:\n        break\n    fds.append(fd)\n    made += 15\n"),
    # 120,000 empty files: the tmpfs's --size caps blocks, not inodes (~100 MiB of kernel memory)
    "tmpfs_inodes": (("Slab",), "import os, time\nmade = 0\ntry:\n    for i in range(120000):\n"
                     "        os.close(os.open(f'/tmp/{i}', os.O_CREAT | os.O_WRONLY, 0o600))\n        made += 1\n"
                     "except OSError:\n    pass\n"),
}


@pytest.mark.parametrize("attack", sorted(_ATTACKS))
def test_memory_outside_the_processes_is_bounded(attack):
    fields, code = _ATTACKS[attack]
    code += "print('made', made, flush=True)\ntime.sleep(1.5)\n"  # hold it while the host looks
    box = {}
    base = meminfo_kib(*fields)
    worker = threading.Thread(target=lambda: box.setdefault(
        "res", execute_code(code, timeout=10.0, max_memory_bytes=128 << 20)))
    worker.start()
    peak = base
    while worker.is_alive():
        peak = max(peak, meminfo_kib(*fields))
        time.sleep(0.02)
    worker.join()
    res = box["res"]
    grown_mib = (peak - base) / 1024
    made = [int(line.split()[1]) for line in res.stdout.splitlines() if line.startswith("made")]
    assert made, res.stdout + res.stderr
    limit = getattr(execution, "TMP_MAX_INODES", 4096) if attack == "tmpfs_inodes" else 0
    assert made[0] <= limit, f"{attack}: made {made[0]} (host {'+'.join(fields)} grew {grown_mib:.0f} MiB)"
    assert grown_mib < 32, f"{attack}: host {'+'.join(fields)} grew {grown_mib:.0f} MiB"


# ---- exit reasons as they happened ----------------------------------------------------------------------------

@pytest.mark.parametrize("code,status", [("import os\nos._exit(137)", 137), ("import sys\nsys.exit(152)", 152)])
def test_the_codes_own_exit_status_is_not_a_limit(code, status):
    res = execute_code(code)
    assert not res.success and not res.memory_exceeded and not res.timeout, res
    assert res.error == f"exit status {status}", res.error


def test_a_signal_the_code_sends_itself_is_not_a_limit():
    res = execute_code("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)")
    assert not res.success and not res.memory_exceeded and not res.timeout, res
    assert res.error == "killed by signal 9 (SIGKILL)", res.error


def test_real_limits_are_still_reported():
    mem = execute_code("x = bytearray(1 << 30)", max_memory_bytes=256 << 20)
    assert mem.memory_exceeded and not mem.success, mem
    slow = execute_code("while True:\n    pass", timeout=1.0)
    assert slow.timeout and not slow.memory_exceeded and slow.error == "timed out after 1s", slow
