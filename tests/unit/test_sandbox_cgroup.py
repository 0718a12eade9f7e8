"""Where the sandbox's memory and process bound comes from: a delegated cgroup v2 subtree when one exists, else the
rlimit fallback, which `nanotui doctor` names; a configured cgroup that cannot be used refuses."""
import os
import shutil

import pytest

from nanochat import execution, sandbox_cgroup
from nanochat.execution import SandboxUnavailable, execute_code
from nanotui.runtime.doctor import check_sandbox
from sandbox_helpers import needs_sandbox


@pytest.fixture(autouse=True)
def fresh_state(monkeypatch):
    monkeypatch.setattr(execution, "_state", {"unsafe": False, "probe": {}})


def _fake_cgroup(tmp_path, controllers="cpu memory pids", enabled=""):
    d = tmp_path / "delegated"
    d.mkdir()
    (d / "cgroup.controllers").write_text(controllers + "\n")
    (d / "cgroup.subtree_control").write_text(enabled + "\n")
    return d


def test_configured_cgroup_without_the_controllers_refuses_in_one_line(tmp_path, monkeypatch):
    d = _fake_cgroup(tmp_path, controllers="cpu io")
    monkeypatch.setenv(sandbox_cgroup.ENV_VAR, str(d))
    parent, why = sandbox_cgroup.find_parent()
    assert parent is None and "no memory and pids controller" in why
    with pytest.raises(SandboxUnavailable) as info:
        execute_code("print(1)")
    message = str(info.value)
    assert "\n" not in message and sandbox_cgroup.ENV_VAR in message and "unset it" in message


def test_configured_cgroup_that_is_not_a_cgroup_refuses(tmp_path, monkeypatch):
    monkeypatch.setenv(sandbox_cgroup.ENV_VAR, str(tmp_path / "missing"))
    assert "not a cgroup v2 directory" in sandbox_cgroup.find_parent()[1]


def test_delegated_cgroup_gets_one_child_per_run_with_the_limits(tmp_path, monkeypatch):
    d = _fake_cgroup(tmp_path, enabled="memory pids")
    monkeypatch.setenv(sandbox_cgroup.ENV_VAR, str(d))
    assert sandbox_cgroup.find_parent() == (str(d), "")
    real_mkdir = os.mkdir

    def kernel_mkdir(path, *a):  # what the kernel does on mkdir in cgroupfs: the interface files appear
        real_mkdir(path, *a)
        for name in ("memory.max", "memory.swap.max", "pids.max", "cgroup.procs", "cgroup.kill", "memory.events"):
            open(os.path.join(path, name), "w").close()
    monkeypatch.setattr(sandbox_cgroup.os, "mkdir", kernel_mkdir)
    run = sandbox_cgroup.RunCgroup(str(d), 256 << 20, 17)
    assert (open(os.path.join(run.path, "memory.max")).read(), open(os.path.join(run.path, "pids.max")).read()) == (
        str(256 << 20), "17")
    assert open(os.path.join(run.path, "memory.swap.max")).read() == "0"
    assert run.procs == os.path.join(run.path, "cgroup.procs") and os.path.dirname(run.path) == str(d)
    run.kill()
    assert open(os.path.join(run.path, "cgroup.kill")).read() == "1"


def test_own_cgroup_without_delegation_means_the_fallback(monkeypatch):
    monkeypatch.delenv(sandbox_cgroup.ENV_VAR, raising=False)
    parent, why = sandbox_cgroup.find_parent()
    if parent is not None:
        pytest.skip(f"this machine delegates {parent}: the cgroup path is used")
    assert why and execution.limits_description().startswith("rlimit fallback")


@needs_sandbox
def test_doctor_names_the_bound_in_use(monkeypatch):
    monkeypatch.delenv(sandbox_cgroup.ENV_VAR, raising=False)
    status, detail = check_sandbox()
    assert status == "ok", detail
    parent, _ = sandbox_cgroup.find_parent()
    assert ("limits: cgroup v2 under" if parent else "limits: rlimit fallback") in detail, detail


_AS_USER = r'''
import json
from nanochat import execution as e
out = {"problem": e.sandbox_problem(), "limits": e.limits_description()}
r = e.execute_code("import os\nprint(os.getppid())\nopen('/tmp/x', 'w')")
out["tmp"] = r.stderr.strip().splitlines()[-1]
out["ppid"] = r.stdout.strip()
out["exit137"] = vars(e.execute_code("import os\nos._exit(137)"))
print(json.dumps(out))
'''


@needs_sandbox
def test_the_unprivileged_fallback_runs_with_a_read_only_tmp(tmp_path):
    """Not root and no cgroup: nothing could cap the tmpfs's inodes, so /tmp is read-only; the rest holds."""
    import json
    import subprocess
    from sandbox_helpers import REPO_ROOT
    python = "/usr/bin/python3"
    if os.geteuid() != 0 or not os.access(python, os.X_OK) or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv (to become nobody) and a system Python nobody can run")
    r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", python, "-c", _AS_USER],
                       capture_output=True, text=True, timeout=120, cwd="/",
                       env={"PATH": "/usr/bin:/bin", "HOME": "/", "PYTHONPATH": str(REPO_ROOT)})
    if r.returncode != 0 and "No module named" in r.stderr:
        pytest.skip(f"the checkout is not readable by nobody: {r.stderr.strip().splitlines()[-1]}")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["problem"] is None and "/tmp read-only" in out["limits"], out
    assert "Read-only file system" in out["tmp"] and out["ppid"] == "1", out
    assert out["exit137"]["error"] == "exit status 137" and not out["exit137"]["memory_exceeded"], out
