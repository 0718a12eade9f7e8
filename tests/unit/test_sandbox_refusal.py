"""Where the sandbox cannot be set up nothing runs: one-line refusal naming the fix, HumanEval skipped (not 0 %) by
chat_eval, and the loud --unsafe-exec opt-out."""
import json
import os
import shutil
import stat
import tempfile
from pathlib import Path

import pytest

from nanochat import execution
from nanochat.common import UsageError
from nanochat.execution import SandboxUnavailable, execute_code, sandbox_problem
from nanochat.scripts import chat_eval
from sandbox_helpers import needs_sandbox, outside  # noqa: F401


@pytest.fixture(autouse=True)
def safe_mode():
    execution.set_unsafe_exec(False)
    yield
    execution.set_unsafe_exec(False)


@pytest.fixture
def fake_bwrap():
    """A world-readable directory for stand-in bwrap executables (when root, bwrap runs as nobody)."""
    d = Path(tempfile.mkdtemp(prefix="nanochat-fake-bwrap-"))
    os.chmod(d, 0o755)

    def make(body: str, version: str = "0.8.0") -> str:
        path = d / f"bwrap-{len(list(d.iterdir()))}"
        path.write_text(f'#!/bin/sh\n[ "$1" = "--version" ] && echo "bubblewrap {version}" && exit 0\n{body}\n')
        path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH | stat.S_IROTH)
        return str(path)
    yield make
    shutil.rmtree(d, ignore_errors=True)


def _writes(target: Path) -> str:
    return f"open({str(target)!r}, 'w').write('ran')"


def test_missing_bwrap_refuses_with_the_fix_and_runs_nothing(outside, monkeypatch):
    monkeypatch.setenv("NANOCHAT_BWRAP", "/nonexistent/bwrap")
    target = outside / "ran.txt"
    with pytest.raises(SandboxUnavailable) as info:
        execute_code(_writes(target))
    message = str(info.value)
    assert isinstance(info.value, UsageError) and "\n" not in message
    assert "apt-get install bubblewrap" in message and "--unsafe-exec" in message and "/nonexistent/bwrap" in message
    assert not target.exists()


def test_bwrap_that_cannot_create_namespaces_refuses(fake_bwrap, outside, monkeypatch):
    # what bwrap prints where unprivileged user namespaces are forbidden (Ubuntu 24.04's AppArmor default)
    monkeypatch.setenv("NANOCHAT_BWRAP", fake_bwrap("echo 'bwrap: setting up uid map: Permission denied' >&2; exit 1"))
    target = outside / "ran.txt"
    problem = sandbox_problem()
    assert problem and "setting up uid map: Permission denied" in problem and "\n" not in problem
    assert "kernel.apparmor_restrict_unprivileged_userns" in problem
    with pytest.raises(SandboxUnavailable):
        execute_code(_writes(target))
    assert not target.exists()


def test_too_old_bwrap_says_upgrade(fake_bwrap, monkeypatch):
    monkeypatch.setenv("NANOCHAT_BWRAP", fake_bwrap("echo 'bwrap: Unknown option --clearenv' >&2; exit 1"))
    problem = sandbox_problem()
    assert "Unknown option --clearenv" in problem and "upgrade bubblewrap" in problem
    monkeypatch.setenv("NANOCHAT_BWRAP", fake_bwrap("exit 1", version="0.6.2"))
    problem = sandbox_problem()
    assert "bubblewrap 0.6.2" in problem and "upgrade bubblewrap" in problem and "\n" not in problem


@needs_sandbox
def test_bwrap_without_disable_userns_and_size_still_isolates(fake_bwrap, monkeypatch):
    if execution.sandbox.seccomp_program()[0] is None:
        pytest.skip("libseccomp is not available here: the filter is what refuses nested namespaces then")
    real = shutil.which("bwrap") or "/usr/bin/bwrap"
    old = fake_bwrap(f'if [ "$1" = "--help" ]; then {real} --help | grep -v -e disable-userns -e -- "--size"; '
                     f'exit 0; fi\nexec {real} "$@"')
    monkeypatch.setenv("NANOCHAT_BWRAP", old)
    assert sandbox_problem() is None
    assert "lacks --disable-userns, --size" in execution.sandbox_description()
    res = execute_code("import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
                       "print('unshare', libc.unshare(0x10000000), ctypes.get_errno())")
    assert res.success and "unshare -1 1" in res.stdout, res.stdout + res.stderr  # seccomp still refuses it


def test_bwrap_that_runs_nothing_is_not_trusted(fake_bwrap, monkeypatch):
    monkeypatch.setenv("NANOCHAT_BWRAP", fake_bwrap("exit 0"))  # "succeeds" without running the probe
    assert sandbox_problem() and "failed" in sandbox_problem()


def test_humaneval_task_refuses_instead_of_failing(monkeypatch):
    from nanochat.tasks.humaneval import HumanEval
    monkeypatch.setenv("NANOCHAT_BWRAP", "/nonexistent/bwrap")
    task = HumanEval.__new__(HumanEval)  # no download: evaluate() only needs the conversation
    conv = {"prompt": "def add(a, b):\n", "test": "def check(f):\n    assert f(1, 2) == 3\n", "entry_point": "add"}
    with pytest.raises(SandboxUnavailable):
        task.evaluate(conv, "def add(a, b):\n    return a + b\n")


def test_unsafe_exec_runs_unisolated_loudly_with_limits(monkeypatch, capsys):
    monkeypatch.setenv("NANOCHAT_BWRAP", "/nonexistent/bwrap")
    execution.set_unsafe_exec(True)
    assert "WITHOUT isolation" in capsys.readouterr().err
    res = execute_code("import os\nprint(os.path.exists('/etc/passwd'))")
    assert res.success and res.stdout.strip() == "True"  # really unisolated: the host's /etc is there
    assert execute_code("while True:\n    pass", timeout=1.0).timeout
    big = execute_code("import sys\nfor _ in range(4):\n    sys.stdout.write('z' * (1 << 20))")
    assert big.success and big.output_truncated and len(big.stdout) < execution.MAX_OUTPUT_BYTES + 200


# ---- chat_eval -----------------------------------------------------------------------------------------------

class _Tok:
    def render_for_completion(self, conv):
        return [1, 2]

    def decode(self, ids):
        return "```python\ndef add(a, b):\n    return a + b\n```"


class _Engine:
    def __init__(self, model, tokenizer):
        pass

    def generate_batch(self, prompt, **kw):
        return [prompt + [3]], [[0, 0, 1]]


class _FakeHumanEval:
    eval_type = "generative"
    timeout_s = 5.0

    def __len__(self):
        return 1

    def __getitem__(self, i):
        return {"prompt": "def add(a, b):\n", "test": "def check(f):\n    assert f(1, 2) == 3\n",
                "entry_point": "add"}

    def evaluate(self, conv, completion):
        from nanochat.tasks.humaneval import HumanEval
        return HumanEval.evaluate(self, conv, completion)


@pytest.fixture
def fake_chat_eval(monkeypatch, base_dir):
    loaded = []
    monkeypatch.setattr(chat_eval, "load_model", lambda *a, **k: (object(), _Tok(), {"step": 7}))
    monkeypatch.setattr(chat_eval, "Engine", _Engine)
    monkeypatch.setattr(chat_eval, "load_task", lambda name, demo: loaded.append(name) or _FakeHumanEval())
    return loaded


def _report(base_dir):
    for path in (base_dir / "report").glob("*.json"):
        data = json.loads(path.read_text())
        if data.get("section", "").startswith("Chat evaluation"):
            return data["values"]
    raise AssertionError("no chat evaluation report")


def test_chat_eval_reports_humaneval_skipped_with_the_reason(fake_chat_eval, base_dir, monkeypatch, capsys):
    monkeypatch.setenv("NANOCHAT_BWRAP", "/nonexistent/bwrap")
    assert chat_eval.main(["-a", "HumanEval", "--device_type", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "HumanEval: skipped (code sandbox unavailable: bwrap not found" in out
    assert "HumanEval accuracy" not in out and fake_chat_eval == []  # never loaded, never run
    values = _report(base_dir)
    assert values["HumanEval"].startswith("skipped: code sandbox unavailable") and "ChatCORE" not in values


def test_chat_eval_unsafe_exec_flag_runs_humaneval(fake_chat_eval, base_dir, monkeypatch, capsys):
    monkeypatch.setenv("NANOCHAT_BWRAP", "/nonexistent/bwrap")
    assert chat_eval.main(["-a", "HumanEval", "--device_type", "cpu", "--unsafe-exec"]) == 0
    captured = capsys.readouterr()
    assert "WITHOUT isolation" in captured.err and "Code execution: UNSAFE" in captured.out
    assert "HumanEval accuracy: 100.00% (1/1)" in captured.out
    assert _report(base_dir)["HumanEval"] == 1.0


@needs_sandbox
def test_chat_eval_runs_humaneval_in_the_sandbox(fake_chat_eval, base_dir, capsys):
    assert chat_eval.main(["-a", "HumanEval", "--device_type", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "Code execution: bubblewrap" in out and "HumanEval accuracy: 100.00% (1/1)" in out
