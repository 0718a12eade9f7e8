"""Kernel isolation for untrusted code: the bubblewrap command line, the seccomp filter and the availability probe."""
from __future__ import annotations

import atexit
import ctypes
import ctypes.util
import errno
import os
import re
import subprocess
import sys
import sysconfig
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
    "open_by_handle_at", "name_to_handle_at", "personality",
    # memory that belongs to no process (it would outlive the limits and land on the host): SysV IPC, POSIX message
    # queues, memfds
    "shmget", "shmat", "shmdt", "shmctl", "msgget", "msgsnd", "msgrcv", "msgctl", "semget", "semop", "semtimedop",
    "semctl", "ipc", "mq_open", "mq_unlink", "mq_timedsend", "mq_timedreceive", "mq_notify", "mq_getsetattr",
    "memfd_create", "memfd_secret")
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


SYSTEM_BWRAPS = ("/usr/bin/bwrap", "/bin/bwrap")
MIN_BWRAP_VERSION = (0, 8, 0)
_versions: dict = {}


def bwrap_path() -> str | None:
    """The bwrap to use, or None: `$NANOCHAT_BWRAP` when set (an absolute path the user chose), else the system's
    (/usr/bin/bwrap), never one found on PATH. `bwrap_problem()` says whether it may be trusted."""
    explicit = os.environ.get("NANOCHAT_BWRAP")
    if explicit:
        ok = os.path.isabs(explicit) and os.path.isfile(explicit) and os.access(explicit, os.X_OK)
        return explicit if ok else None
    return next((p for p in SYSTEM_BWRAPS if os.path.isfile(p) and os.access(p, os.X_OK)), None)


def bwrap_version(bwrap: str) -> tuple[int, ...] | None:
    """The version `bwrap --version` reports ("bubblewrap 0.8.0"), or None when it is not bubblewrap's answer."""
    key = (bwrap, _mtime(bwrap))
    if key not in _versions:
        try:
            out = subprocess.run([bwrap, "--version"], capture_output=True, text=True, timeout=10,
                                 env={"PATH": "/usr/bin:/bin"}).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            out = ""
        m = re.fullmatch(r"bubblewrap (\d+)\.(\d+)(?:\.(\d+))?", out)
        _versions[key] = tuple(int(g or 0) for g in m.groups()) if m else None
    return _versions[key]


def _mtime(path: str) -> float:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return 0.0


def bwrap_problem() -> str | None:
    """Why the configured bwrap is not trusted (one line with the fix), or None."""
    explicit = os.environ.get("NANOCHAT_BWRAP")
    if explicit and not os.path.isabs(explicit):
        return f"NANOCHAT_BWRAP={explicit} is not an absolute path; set it to the full path of bubblewrap or unset it"
    bwrap = bwrap_path()
    if bwrap is None:
        found = f"bwrap not found at NANOCHAT_BWRAP={explicit}" if explicit else "bubblewrap (bwrap) not found"
        return f"{found}; {INSTALL_HINT}"
    version = bwrap_version(bwrap)
    named = f"NANOCHAT_BWRAP={bwrap}" if explicit else bwrap
    if version is None:
        return f"{named} does not answer --version as bubblewrap does; point NANOCHAT_BWRAP at bubblewrap or unset it"
    if version < MIN_BWRAP_VERSION:
        have = ".".join(map(str, version))
        return f"{named} is bubblewrap {have}; {UPGRADE_HINT}"
    return None


def python_paths() -> tuple[str, list[str], list[str]]:
    """The interpreter to run inside (resolved through venv symlinks), the host paths it needs read-only (the
    executable, its standard library with lib-dynload, libpython; not its whole prefix, which may be / or $HOME),
    and the directories under them to hide (site-packages). Computed once per process."""
    if "paths" not in _paths_cache:
        _paths_cache["paths"] = _python_paths()
    return _paths_cache["paths"]


_paths_cache: dict = {}


def _python_paths() -> tuple[str, list[str], list[str]]:
    exe = os.path.realpath(sys.executable)
    stdlib = os.path.realpath(os.path.dirname(os.__file__))
    wanted = [exe, stdlib, os.path.realpath(sysconfig.get_config_var("DESTSHARED") or stdlib)] + _libpython()
    paths: list[str] = []
    for p in wanted:
        if p == "/usr" or p.startswith("/usr/") or any(p == k or p.startswith(k + "/") for k in paths):
            continue
        paths = [k for k in paths if not k.startswith(p + "/")] + [p]
    hide = [d for d in (os.path.join(stdlib, n) for n in ("site-packages", "dist-packages")) if os.path.isdir(d)]
    return exe, paths, hide


def _libpython() -> list[str]:
    """The libpython this interpreter has loaded (a --enable-shared build), from /proc/self/maps."""
    found = set()
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                path = line.split(None, 5)[-1].strip() if line.count(" ") >= 5 else ""
                if os.path.basename(path).startswith("libpython") and os.path.isfile(path):
                    found.add(os.path.realpath(path))
    except OSError:
        pass
    return sorted(found)


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


def bwrap_argv(bwrap: str, binds: list[tuple[str, str]], hide: list[str], seccomp_fd: int, info_fd: int,
               tmp: tuple[str, int | str], argv: list[str]) -> list[str]:
    """The full bwrap command: every namespace, `argv` as the sandbox's pid 1 (no bwrap init: every process in it
    runs under the limits the prologue sets), a read-only system, /tmp (the only writable place: `tmp` is
    ("bind", host dir) for a tmpfs mounted with size and inode caps before bwrap runs, ("tmpfs", size) for bwrap's
    own, writable, ("ro-tmpfs", size) for an empty read-only one), five device nodes, no /etc, /home, /root, base dir,
    host /tmp, /dev/shm or site-packages, no capabilities, no new user namespaces, a scrubbed environment, the seccomp
    filter, and bwrap's --info-fd (the host pid of the sandbox's pid 1, for the kill)."""
    args = [bwrap, "--unshare-all", "--unshare-user", "--die-with-parent", "--new-session", "--as-pid-1",
            "--cap-drop", "ALL", "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID), "--hostname", "sandbox"]
    if "--disable-userns" in bwrap_features(bwrap):
        args.append("--disable-userns")
    args += _system_layout()
    for source, dest in binds:
        args += ["--ro-bind", source, dest]
    for d in hide:
        args += ["--size", "4096", "--tmpfs", d, "--remount-ro", d]
    args += ["--proc", "/proc"]
    for dev in DEVICES:  # the harmless device nodes only (cheaper than bwrap's --dev tmpfs, and nothing writable)
        args += ["--dev-bind", dev, dev]
    for fd, name in enumerate(("stdin", "stdout", "stderr")):
        args += ["--symlink", f"/proc/self/fd/{fd}", f"/dev/{name}"]
    args += ["--symlink", "/proc/self/fd", "/dev/fd"]
    kind, value = tmp
    if kind == "bind":
        args += ["--bind", str(value), "/tmp"]
    else:
        args += ["--size", str(value), "--tmpfs", "/tmp"] + (["--remount-ro", "/tmp"] if kind == "ro-tmpfs" else [])
    args += ["--remount-ro", "/", "--chdir", "/tmp", "--clearenv"]
    for key, val in ENV.items():
        args += ["--setenv", key, val]
    args += ["--seccomp", str(seccomp_fd), "--info-fd", str(info_fd)]
    return args + ["--"] + argv


# ---- before bwrap runs (preexec_fn): the limits every process inherits, the run's cgroup, and when root: bwrap
# runs as nobody (so RLIMIT_NPROC applies: the kernel exempts uid 0), the paths nobody cannot reach (a Python under
# /root) are bind-mounted onto world-readable staging paths, and /tmp is a tmpfs with a size and an inode cap, all in
# a private mount namespace of the bwrap process only.

_CLONE_NEWNS, _MS_BIND, _MS_REC, _MS_PRIVATE, _MS_NOSUID, _MS_NODEV = 0x00020000, 4096, 16384, 1 << 18, 2, 4


def as_root() -> bool:
    return os.geteuid() == 0


_stages: dict = {}


def stage_path(source: str) -> str:
    """An empty world-readable directory (or file, for a file) under /tmp, one per source per process and removed at
    exit, that the root preexec bind-mounts `source` onto, inside the private mount namespace of one bwrap only."""
    if source not in _stages:
        stage = tempfile.mkdtemp(prefix="nanochat-sandbox-", dir="/tmp" if os.path.isdir("/tmp") else None)
        os.chmod(stage, 0o755)
        atexit.register(_remove_stage, stage)
        if source != "\0tmpfs" and not os.path.isdir(source):
            stage = os.path.join(stage, "file")
            with open(stage, "w"):
                pass
            os.chmod(stage, 0o644)
        _stages[source] = stage
    return _stages[source]


def tmpfs_stage() -> str:
    """The empty directory (one per process) the root preexec mounts each run's private /tmp tmpfs on."""
    return stage_path("\0tmpfs")


def _remove_stage(stage: str) -> None:
    try:
        if os.path.isfile(os.path.join(stage, "file")):
            os.unlink(os.path.join(stage, "file"))
        os.rmdir(stage)
    except OSError:
        pass


def make_preexec(rlimits: dict[str, int], cgroup_procs: str | None, root: bool = False,
                 stages: list[tuple[str, str]] = (), tmpfs: tuple[str, str] | None = None):
    """preexec_fn: join the run's cgroup; when root, the private mount namespace with the stage binds and the capped
    /tmp (`tmpfs` = (stage dir, mount options)), then drop to nobody; last, the rlimits bwrap and all it starts
    inherit (RLIMIT_NPROC is set inside, where it counts the sandbox's processes only)."""
    import resource
    libc = ctypes.CDLL(None, use_errno=True)
    unshare, mount = libc.unshare, libc.mount
    pairs = [(s.encode(), d.encode()) for s, d in stages]
    tmp = (tmpfs[0].encode(), tmpfs[1].encode()) if tmpfs else None
    limits = [(getattr(resource, name), value) for name, value in rlimits.items() if value >= 0]

    def preexec():
        if cgroup_procs:
            fd = os.open(cgroup_procs, os.O_WRONLY)
            try:
                os.write(fd, b"0")
            finally:
                os.close(fd)
        if root:
            if unshare(_CLONE_NEWNS) != 0 or mount(b"none", b"/", None, _MS_REC | _MS_PRIVATE, None) != 0:
                os._exit(125)
            for source, stage in pairs:
                if mount(source, stage, None, _MS_BIND | _MS_REC, None) != 0:
                    os._exit(125)
            if tmp and mount(b"tmpfs", tmp[0], b"tmpfs", _MS_NOSUID | _MS_NODEV, tmp[1]) != 0:
                os._exit(125)
            os.setgroups([])
            os.setgid(SANDBOX_UID)
            os.setuid(SANDBOX_UID)
        for which, value in limits:
            resource.setrlimit(which, (value, value))
    return preexec
