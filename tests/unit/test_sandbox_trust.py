"""Second-round attacks on what the sandbox trusts: a missing seccomp layer refuses, only a real bubblewrap is
trusted, only the standard library of the interpreter is visible, and HumanEval passes only when check() ran."""
import ctypes
import json
import os
import shutil
import stat
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import pytest

from nanochat import execution, sandbox
from nanochat.execution import SandboxUnavailable, execute_code, sandbox_problem
from sandbox_helpers import PARENT_SCRIPT, REPO_ROOT, needs_sandbox, outside  # noqa: F401

SYSTEM_BWRAP = "/usr/bin/bwrap"
# syscalls the filter refuses: io_uring_setup, keyctl (KEYCTL_GET_KEYRING_ID), personality (query)
_FILTERED = ("import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
             "print('io_uring_setup', libc.syscall(425, 1, ctypes.create_string_buffer(120)))\n"
             "print('keyctl', libc.syscall(250, 0, -3, 0))\n"
             "print('personality', libc.syscall(135, 0xffffffff))\n")


@pytest.fixture(autouse=True)
def fresh_probe(monkeypatch):
    """Each test sees its own probe and seccomp build (they are cached per process)."""
    monkeypatch.setattr(execution, "_state", {"unsafe": False, "probe": {}})
    monkeypatch.setattr(sandbox, "_seccomp_cache", {})


@pytest.fixture
def script_dir():
    """A world-readable directory for stand-in bwrap executables (when root, bwrap runs as nobody)."""
    d = Path(tempfile.mkdtemp(prefix="nanochat-fake-bwrap-"))
    os.chmod(d, 0o755)

    def make(body: str) -> str:
        path = d / f"bwrap-{len(list(d.iterdir()))}"
        path.write_text("#!/bin/sh\n" + body + "\n")
        path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH | stat.S_IROTH)
        return str(path)
    yield make
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def host_tmp_target():
    """A file path any user can create (host /tmp, world-writable dir): written only if code runs unisolated."""
    d = Path(tempfile.mkdtemp(prefix="nanochat-trust-"))
    os.chmod(d, 0o777)
    yield d / "ran-unisolated.txt"
    shutil.rmtree(d, ignore_errors=True)


def _one_line_refusal(info, *words):
    message = str(info.value)
    assert "\n" not in message and "--unsafe-exec" in message, message
    for word in words:
        assert word in message, message


# ---- finding 2: no seccomp filter => refuse ------------------------------------------------------------------

@needs_sandbox
def test_missing_libseccomp_refuses_instead_of_running_unfiltered(monkeypatch):
    real_cdll = ctypes.CDLL

    def no_libseccomp(name, *a, **k):  # the library cannot be loaded: what a host without libseccomp2 looks like
        if name and "seccomp" in str(name):
            raise OSError(f"{name}: cannot open shared object file: No such file or directory")
        return real_cdll(name, *a, **k)
    monkeypatch.setattr(ctypes, "CDLL", no_libseccomp)
    with pytest.raises(SandboxUnavailable) as info:
        res = execute_code(_FILTERED)
        pytest.fail(f"ran without the seccomp filter: {res.stdout}")
    _one_line_refusal(info, "libseccomp")


@needs_sandbox
def test_bwrap_that_drops_the_filter_is_refused(script_dir, monkeypatch):
    # a wrapper that passes everything to the real bwrap except --seccomp FD: the code would run unfiltered
    wrapper = script_dir('skip=0\nfirst=1\nfor a in "$@"; do\n  if [ $first = 1 ]; then set --; first=0; fi\n'
                         '  if [ $skip = 1 ]; then skip=0; continue; fi\n'
                         '  if [ "$a" = "--seccomp" ]; then skip=1; continue; fi\n  set -- "$@" "$a"\ndone\n'
                         f'exec {SYSTEM_BWRAP} "$@"')
    monkeypatch.setenv("NANOCHAT_BWRAP", wrapper)
    with pytest.raises(SandboxUnavailable) as info:
        res = execute_code(_FILTERED)
        pytest.fail(f"ran without the seccomp filter: {res.stdout}")
    _one_line_refusal(info, "seccomp")


# ---- finding 6: only a real bubblewrap is trusted --------------------------------------------------------------

# runs the command after "--" unisolated, with a Python any user can run (root's may be under /root)
_UNISOLATED = ('while [ $# -gt 0 ] && [ "$1" != "--" ]; do shift; done\n[ $# -gt 1 ] || exit 0\nshift 2\n'
               'py=/usr/bin/python3; [ -x $py ] || py=python3\nexec $py "$@"')


def test_a_binary_that_runs_the_code_unisolated_is_not_trusted(script_dir, host_tmp_target, monkeypatch):
    monkeypatch.setenv("NANOCHAT_BWRAP", script_dir(_UNISOLATED))  # prints the probe's output: it runs it
    with pytest.raises(SandboxUnavailable) as info:
        execute_code(f"open({str(host_tmp_target)!r}, 'w').write('x')")
    assert not host_tmp_target.exists()
    _one_line_refusal(info, "NANOCHAT_BWRAP")


def test_a_fake_that_claims_a_bwrap_version_is_not_trusted(script_dir, host_tmp_target, monkeypatch):
    fake = script_dir('[ "$1" = "--version" ] && echo "bubblewrap 0.11.0" && exit 0\n'
                      '[ "$1" = "--help" ] && echo "--disable-userns --size" && exit 0\n' + _UNISOLATED)
    monkeypatch.setenv("NANOCHAT_BWRAP", fake)
    with pytest.raises(SandboxUnavailable) as info:
        execute_code(f"open({str(host_tmp_target)!r}, 'w').write('x')")
    assert not host_tmp_target.exists()
    _one_line_refusal(info)


def test_a_relative_bwrap_path_is_not_trusted(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    fake = tmp_path / "bwrap"
    fake.write_text("#!/bin/sh\n" + _UNISOLATED + "\n")
    fake.chmod(0o755)
    monkeypatch.setenv("NANOCHAT_BWRAP", "bwrap")
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ.get('PATH', '')}")
    problem = sandbox_problem()
    assert problem and "absolute" in problem and "\n" not in problem, problem


@needs_sandbox
def test_a_bwrap_earlier_on_path_is_not_used(script_dir, host_tmp_target, monkeypatch):
    fake_dir = os.path.dirname(script_dir(_UNISOLATED))
    os.rename(os.path.join(fake_dir, "bwrap-0"), os.path.join(fake_dir, "bwrap"))
    monkeypatch.delenv("NANOCHAT_BWRAP", raising=False)
    monkeypatch.setenv("PATH", f"{fake_dir}:{os.environ.get('PATH', '')}")
    res = execute_code(f"try:\n    open({str(host_tmp_target)!r}, 'w').write('x')\nexcept OSError:\n    pass\n"
                       "print('ran')")
    assert not host_tmp_target.exists()  # the system bwrap ran it: the host's /tmp is not the sandbox's
    assert "ran" in res.stdout, res.stderr


# ---- finding 4: only the standard library is bound ---------------------------------------------------------------

@needs_sandbox
def test_only_the_standard_library_of_the_interpreter_is_visible(outside, tmp_path):
    """An interpreter whose prefix holds other things (here a secret file; a prefix of / or $HOME holds
    everything): only its executable, standard library and libpython may be visible inside."""
    real = os.path.realpath(sys.executable)
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    stdlib = os.path.realpath(sysconfig.get_paths()["stdlib"])
    prefix = outside / "prefix"
    (prefix / "bin").mkdir(parents=True)
    (prefix / "lib").mkdir()
    shutil.copy2(real, prefix / "bin" / version)
    (prefix / "lib" / version).symlink_to(stdlib)
    for lib in Path(os.path.dirname(os.path.dirname(real)), "lib").glob("libpython*.so*"):
        (prefix / "lib" / lib.name).symlink_to(lib)  # when the interpreter links libpython by $ORIGIN
    (prefix / "SECRET.txt").write_text("PREFIX-SECRET-42")
    os.chmod(outside, 0o755)
    code = (f"import os\ntry:\n    print(open({str(prefix / 'SECRET.txt')!r}).read())\nexcept OSError as e:\n"
            f"    print('no', type(e).__name__)\nprint('prefix', sorted(os.listdir({str(prefix)!r})))\n"
            f"sp = os.path.join({stdlib!r}, 'site-packages')\n"
            "print('site-packages', sorted(os.listdir(sp)) if os.path.isdir(sp) else None)")
    path = tmp_path / "attack.py"
    path.write_text(code)
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.run([str(prefix / "bin" / version), "-c", PARENT_SCRIPT, str(path), "10"], capture_output=True,
                          text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "PREFIX-SECRET-42" not in report["stdout"], report["stdout"]
    assert "SECRET.txt" not in report["stdout"], report["stdout"]
    lines = report["stdout"].splitlines()
    assert lines[-1] in ("site-packages None", "site-packages []"), lines[-1]


# ---- finding 5: HumanEval passes only when check() ran ----------------------------------------------------------

_PROBLEM = {"prompt": "def add(a, b):\n", "entry_point": "add",
            "test": "def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(2, 2) == 4\n"}


def _humaneval(completion: str) -> bool:
    from nanochat.tasks.humaneval import HumanEval
    task = HumanEval.__new__(HumanEval)  # no download: evaluate() only needs the conversation
    return task.evaluate(dict(_PROBLEM), completion)


@needs_sandbox
@pytest.mark.parametrize("escape", ["import sys\nsys.exit(0)", "import os\nos._exit(0)",
                                    "raise SystemExit", "import os\nprint('ok')\nos._exit(0)"])
def test_humaneval_exit_before_the_tests_scores_false(escape):
    completion = f"```python\ndef add(a, b):\n    return 0\n{escape}\n```"
    assert _humaneval(completion) is False


@needs_sandbox
def test_humaneval_correct_and_wrong_completions_still_score():
    assert _humaneval("```python\ndef add(a, b):\n    return a + b\n```") is True
    assert _humaneval("```python\ndef add(a, b):\n    return a - b\n```") is False
