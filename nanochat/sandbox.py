"""Kernel isolation for untrusted code: the bubblewrap command line, the seccomp filter and the availability probe."""
from __future__ import annotations

import atexit
import ctypes
import ctypes.util
import errno
import os
import shutil
import subprocess
import sys
import tempfile

SANDBOX_UID = 65534  # "nobody": the uid inside the sandbox, and the real uid bwrap runs as when we are root
ENV = {"HOME": "/tmp", "TMPDIR": "/tmp", "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1",
       "PYTHONHASHSEED": "0"}
INSTALL_HINT = "install bubblewrap (Debian/Ubuntu: sudo apt-get install bubblewrap)"
UPGRADE_HINT = "upgrade bubblewrap (0.8 or newer is tested)"
USERNS_HINT = ("allow unprivileged user namespaces (Ubuntu 24.04+: sudo sysctl -w "
               "kernel.apparmor_restrict_unprivileged_userns=0)")

# Syscalls the sandboxed code never needs that widen the kernel's attack surface or undo the isolation.
DENIED_SYSCALLS = (
    "mount", "umount2", "pivot_root", "chroot", "unshare", "setns", "move_mount", "open_tree", "fsopen", "fsmount",
    "fsconfig", "fspick", "mount_setattr", "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "bpf",
    "perf_event_open", "userfaultfd", "keyctl", "add_key", "request_key", "io_uring_setup", "io_uring_enter",
    "io_uring_register", "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module", "reboot",
    "swapon", "swapoff", "acct", "syslog", "iopl", "ioperm", "quotactl", "lookup_dcookie", "vhangup", "uselib",
    "open_by_handle_at", "name_to_handle_at", "personality")
NAMESPACE_CLONE_FLAGS = (0x10000000, 0x00020000, 0x20000000, 0x40000000, 0x04000000, 0x08000000, 0x02000000)
AF_UNIX = 1
DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom")
TIOCSTI, TIOCLINUX = 0x5412, 0x541C

_SCMP_ACT_ALLOW = 0x7FFF0000
_SCMP_CMP_NE, _SCMP_CMP_MASKED_EQ = 1, 7


def _errno_action(code: int) -> int:
    return 0x00050000 | (code & 0xFFFF)


class _ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64),
                ("datum_b", ctypes.c_uint64)]


_seccomp_cache: dict = {}


def seccomp_program() -> tuple[bytes | None, str]:
    """The compiled BPF filter for bwrap's --seccomp (built once with the system's libseccomp), or (None, why not)."""
    if "program" not in _seccomp_cache:
        _seccomp_cache["program"] = _build_seccomp()
    return _seccomp_cache["program"]


def _build_seccomp() -> tuple[bytes | None, str]:
    path = ctypes.util.find_library("seccomp") or "libseccomp.so.2"
    try:
        lib = ctypes.CDLL(path, use_errno=True)
    except OSError:
        return None, "libseccomp not found (Debian/Ubuntu: sudo apt-get install libseccomp2)"
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint,
                                           ctypes.POINTER(_ArgCmp)]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    ctx = lib.seccomp_init(_SCMP_ACT_ALLOW)  # other architectures (i386 int 0x80, x32) are killed by libseccomp
    if not ctx:
        return None, "seccomp_init failed"
    try:
        def rule(name: str, action: int, *cmps: tuple[int, int, int, int]) -> None:
            nr = lib.seccomp_syscall_resolve_name(name.encode())
            if nr == -1:  # __NR_SCMP_ERROR: this architecture has no such syscall
                return
            arr = (_ArgCmp * max(1, len(cmps)))(*[_ArgCmp(*c) for c in cmps])
            rc = lib.seccomp_rule_add_array(ctx, action, nr, len(cmps), arr)
            if rc != 0:
                raise OSError(-rc, f"seccomp rule for {name}: {os.strerror(-rc)}")

        for name in DENIED_SYSCALLS:
            rule(name, _errno_action(errno.EPERM))
        rule("clone3", _errno_action(errno.ENOSYS))  # libc falls back to clone(), whose flags we can inspect
        for flag in NAMESPACE_CLONE_FLAGS:
            rule("clone", _errno_action(errno.EPERM), (0, _SCMP_CMP_MASKED_EQ, flag, flag))
        rule("socket", _errno_action(errno.EAFNOSUPPORT), (0, _SCMP_CMP_NE, AF_UNIX, 0))
        for cmd in (TIOCSTI, TIOCLINUX):
            rule("ioctl", _errno_action(errno.EPERM), (1, _SCMP_CMP_MASKED_EQ, 0xFFFFFFFF, cmd))
        fd = os.memfd_create("nanochat-seccomp")
        try:
            rc = lib.seccomp_export_bpf(ctx, fd)
            if rc != 0:
                return None, f"seccomp_export_bpf failed: {os.strerror(-rc)}"
            os.lseek(fd, 0, os.SEEK_SET)
            return os.read(fd, 1 << 20), "on"
        finally:
            os.close(fd)
    except OSError as e:
        return None, str(e)
    finally:
        lib.seccomp_release(ctx)


def bwrap_path() -> str | None:
    """`$NANOCHAT_BWRAP` when set (tests point it at a missing file), else `bwrap` on PATH or in /usr/bin."""
    explicit = os.environ.get("NANOCHAT_BWRAP")
    if explicit:
        return explicit if os.path.isfile(explicit) and os.access(explicit, os.X_OK) else None
    return shutil.which("bwrap") or shutil.which("bwrap", path="/usr/bin:/bin:/usr/local/bin")


def python_paths() -> tuple[str, list[str]]:
    """The interpreter to run inside (resolved through venv symlinks) and the host directories it needs, read-only."""
    exe = os.path.realpath(sys.executable)
    dirs = []
    for d in (sys.base_prefix, sys.base_exec_prefix, os.path.dirname(exe)):
        d = os.path.realpath(d)
        if d == "/usr" or d.startswith("/usr/") or any(d == k or d.startswith(k + "/") for k in dirs):
            continue
        dirs = [k for k in dirs if not k.startswith(d + "/")] + [d]
    return exe, dirs


def _system_layout() -> list[str]:
    """/usr read-only, and /bin, /lib, ... as the host has them (usr-merge symlinks or read-only binds)."""
    args = ["--ro-bind", "/usr", "/usr"]
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        host = "/" + name
        if os.path.islink(host):
            args += ["--symlink", os.readlink(host), host]
        elif os.path.isdir(host):
            args += ["--ro-bind", host, host]
    return args


_features: dict = {}


def bwrap_features(bwrap: str) -> set[str]:
    """The optional options this bwrap knows (`--disable-userns` and `--size` came in 0.8 / 0.7)."""
    if bwrap not in _features:
        try:
            text = subprocess.run([bwrap, "--help"], capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            text = ""
        _features[bwrap] = {opt for opt in ("--disable-userns", "--size") if opt in text}
    return _features[bwrap]


def bwrap_argv(bwrap: str, binds: list[tuple[str, str]], seccomp_fd: int | None, tmp_size: int,
               argv: list[str]) -> list[str]:
    """The full bwrap command: every namespace, a read-only system, a private size-capped /tmp (the only writable
    place), five device nodes, no /etc, /home, /root, base dir or host /tmp, no /dev/shm (so no multiprocessing), no
    capabilities, no new user namespaces, a scrubbed environment. An older
    bwrap without --disable-userns relies on the seccomp filter alone for that; without --size the tmpfs is
    unbounded."""
    features = bwrap_features(bwrap)
    args = [bwrap, "--unshare-all", "--unshare-user", "--die-with-parent", "--new-session",
            "--cap-drop", "ALL", "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID), "--hostname", "sandbox"]
    if "--disable-userns" in features:
        args.append("--disable-userns")
    args += _system_layout()
    for source, dest in binds:
        args += ["--ro-bind", source, dest]

    args += ["--proc", "/proc"]
    for dev in DEVICES:  # the harmless device nodes only (cheaper than bwrap's --dev tmpfs, and nothing writable)
        args += ["--dev-bind", dev, dev]
    for fd, name in enumerate(("stdin", "stdout", "stderr")):
        args += ["--symlink", f"/proc/self/fd/{fd}", f"/dev/{name}"]
    args += ["--symlink", "/proc/self/fd", "/dev/fd"]
    if "--size" in features:
        args += ["--size", str(tmp_size)]
    args += ["--tmpfs", "/tmp", "--remount-ro", "/", "--chdir", "/tmp", "--clearenv"]
    for key, value in ENV.items():
        args += ["--setenv", key, value]
    if seccomp_fd is not None:
        args += ["--seccomp", str(seccomp_fd)]
    return args + ["--"] + argv


# ---- running as root: bwrap itself runs as nobody (so RLIMIT_NPROC applies: the kernel exempts uid 0), and the
# directories nobody cannot reach (a Python under /root) are bind-mounted onto world-readable staging directories
# in a private mount namespace of the bwrap process only.

_CLONE_NEWNS, _MS_BIND, _MS_REC, _MS_PRIVATE = 0x00020000, 4096, 16384, 1 << 18


def as_root() -> bool:
    return os.geteuid() == 0


_stages: dict = {}


def stage_dir(source: str) -> str:
    """An empty world-readable directory in /tmp (one per source, per process, removed at exit) that the root
    preexec bind-mounts `source` onto, inside the private mount namespace of one bwrap process only."""
    if source not in _stages:
        stage = tempfile.mkdtemp(prefix="nanochat-sandbox-", dir="/tmp" if os.path.isdir("/tmp") else None)
        os.chmod(stage, 0o755)
        _stages[source] = stage
        atexit.register(_remove_stage, stage)
    return _stages[source]


def _remove_stage(stage: str) -> None:
    try:
        os.rmdir(stage)
    except OSError:
        pass


def root_preexec(stages: list[tuple[str, str]]):
    """preexec_fn for root: private mount namespace, stage binds, then drop to nobody before exec'ing bwrap."""
    libc = ctypes.CDLL(None, use_errno=True)
    unshare, mount = libc.unshare, libc.mount
    pairs = [(s.encode(), d.encode()) for s, d in stages]

    def preexec():
        if unshare(_CLONE_NEWNS) != 0 or mount(b"none", b"/", None, _MS_REC | _MS_PRIVATE, None) != 0:
            os._exit(125)
        for source, stage in pairs:
            if mount(source, stage, None, _MS_BIND | _MS_REC, None) != 0:
                os._exit(125)
        os.setgroups([])
        os.setgid(SANDBOX_UID)
        os.setuid(SANDBOX_UID)
    return preexec
