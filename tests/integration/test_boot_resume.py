"""Surviving a reboot: `nanotui resume --all-unfinished` (what the systemd user unit runs at boot) resumes the runs a
power loss or a shutdown interrupted, and leaves alone the ones the user stopped; real supervisors and stages."""
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from nanotui.runtime import service
from nanotui.runtime.rundir import RunDir
from nanotui.runtime.supervisor import spawn_supervisor

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "fixtures"))
from fake_trainer import fake_plan, fake_stage  # noqa: E402
from supervisor_helpers import cli, wait_for  # noqa: E402

SYSTEMD_MISSING = service.systemd_absent()


def _start(base_dir, tag, iterations=80):
    stage = fake_stage(device_bs=2, num_iterations=iterations, save_every=5, step_time=0.05, model_tag=tag)
    stage.update(ckpt_subdir=f"base_checkpoints/{tag}", model_tag=tag)
    rd = RunDir.create(base_dir, fake_plan(base_dir, [stage]), run_id=f"run-{tag}")
    return rd, spawn_supervisor(rd)


def _has_checkpoint(rd):
    return (rd.read_state().get("last_checkpoint") or {}).get("step")


def _power_loss(rd, sup):
    """SIGKILL the supervisor and the stage's process group: state.json still says running, nothing is left."""
    wait_for(lambda: _has_checkpoint(rd), what=f"{rd.run_id} checkpoint")
    pgid = rd.read_state()["stage_pid"]
    sup.kill()
    sup.wait(10)
    os.killpg(pgid, signal.SIGKILL)
    wait_for(lambda: not _alive(pgid), what="stage gone")
    assert rd.read_state()["phase"] == "running"


def _alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def _interrupted_runs(base_dir):
    """A: power loss mid-run. B: its supervisor got SIGTERM (shutdown). C: stopped by the user. D: done."""
    a, sup_a = _start(base_dir, "a")
    b, sup_b = _start(base_dir, "b")
    c, sup_c = _start(base_dir, "c")
    d, sup_d = _start(base_dir, "d", iterations=3)
    wait_for(lambda: _has_checkpoint(b), what="b checkpoint")
    sup_b.send_signal(signal.SIGTERM)   # it lets the stage checkpoint, then stops (about 2 s)
    wait_for(lambda: _has_checkpoint(c), what="c checkpoint")
    r = cli("stop", c.run_id)
    assert r.returncode == 0, r.stderr
    _power_loss(a, sup_a)
    assert sup_b.wait(30) == 0 and sup_c.wait(30) == 0 and sup_d.wait(30) == 0
    assert b.read_state()["phase"] == "stopped" and b.read_state()["stop_cause"] == "signal"
    assert c.read_state()["phase"] == "stopped" and c.read_state()["stop_cause"] == "request"
    assert d.read_state()["phase"] == "done"
    return a, b, c, d


def _check_resumed(a, b, c, d):
    for rd in (a, b):
        wait_for(lambda: rd.read_state()["phase"] == "done" and not rd.supervisor_alive(), timeout=60,
                 what=f"{rd.run_id} done")
        last = rd.list_logs()[-1].read_text()
        assert "Resuming optimization from step" in last, rd.run_id
        assert any(e["type"] == "resumed" for e in rd.read_events())
    assert c.read_state()["phase"] == "stopped" and not c.supervisor_alive()
    assert len(c.list_logs()) == 1 and len(d.list_logs()) == 1


def test_the_units_command_resumes_interrupted_runs_only(base_dir, tmp_path):
    a, b, c, d = _interrupted_runs(base_dir)
    # the very command line and environment the unit file holds
    unit = service.unit_text(service.UnitSettings(python=sys.executable, base_dir=str(base_dir),
                                                  path_env=os.environ["PATH"]))
    lines = unit.splitlines()
    argv = shlex.split([x for x in lines if x.startswith("ExecStart=")][0][len("ExecStart="):])
    assert argv[1:] == ["-m", "nanotui.cli", "resume", "--all-unfinished"]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    for x in lines:
        if x.startswith("Environment="):
            k, _, v = shlex.split(x[len("Environment="):])[0].partition("=")
            env[k] = v
    assert env["NANOCHAT_BASE_DIR"] == str(base_dir)
    r = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path,
                       stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout.splitlines()
    assert sorted(line.split(":")[0] for line in out) == ["run-a", "run-b"], out
    assert "power loss" in [x for x in out if x.startswith("run-a")][0]
    assert "signal" in [x for x in out if x.startswith("run-b")][0]
    _check_resumed(a, b, c, d)
    again = cli("resume", "--all-unfinished")
    assert again.returncode == 0 and again.stdout.startswith("no unfinished runs"), again.stdout


def test_resume_all_refuses_extra_arguments(base_dir):
    r = cli("resume", "--all-unfinished", "--step", "5")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--all-unfinished" in r.stderr


@pytest.mark.skipif(SYSTEMD_MISSING is None, reason="systemd is running here: the refusal cannot be shown")
def test_service_install_refuses_without_systemd(tmp_path):
    xdg = tmp_path / "cfg"
    r = cli("service", "install", env={"XDG_CONFIG_HOME": str(xdg)})
    assert r.returncode == 2 and r.stdout == "" and r.stderr.count("\n") == 1
    assert r.stderr.startswith("error: ") and "resume --all-unfinished" in r.stderr
    assert not xdg.exists()   # nothing written


@pytest.mark.skipif(SYSTEMD_MISSING is not None, reason=f"no systemd user manager here: {SYSTEMD_MISSING}")
def test_installed_unit_resumes_with_real_systemd(base_dir, monkeypatch):  # pragma: no cover - needs systemd
    isolated = os.environ["XDG_CONFIG_HOME"]   # no nanotui config file (and so no notify_url) of the real user
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)   # the user manager reads ~/.config/systemd/user
    a, b, c, d = _interrupted_runs(base_dir)
    name = f"nanotui-resume-test-{os.getpid()}.service"
    settings = service.UnitSettings(python=sys.executable, base_dir=str(base_dir), path_env=os.environ["PATH"],
                                    unit_name=name, extra_env=(("XDG_CONFIG_HOME", isolated),))
    try:
        service.install(settings=settings)
        assert (service.unit_dir() / name).exists()
        subprocess.run(["systemctl", "--user", "start", name], check=True, timeout=180)
        _check_resumed(a, b, c, d)
    finally:
        subprocess.run(["systemctl", "--user", "stop", name], capture_output=True, timeout=120)
        service.uninstall(name)
    assert not (service.unit_dir() / name).exists()
