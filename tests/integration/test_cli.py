"""CLI: every user mistake is one `error:` line + exit 2; commands work without a GPU; `run -- CMD` end to end."""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nanotui.runtime.rundir import RunDir

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "fixtures"))
from fake_trainer import fake_plan, fake_stage  # noqa: E402


def cli(*args, env=None, timeout=60):
    e = dict(os.environ, PYTHONPATH=str(REPO), NANOTUI_PLAIN="1")
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "nanotui.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env=e, stdin=subprocess.DEVNULL)


def assert_usage_error(r, *words):
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    for w in words:
        assert w in lines[0]


@pytest.mark.parametrize("args,env,words", [
    (["start", "--profile", "nope"], {}, ["unknown profile", "cpu-demo"]),
    (["start", "--profile", "cpu-demo"], {"DEVICE_BS": "abc"}, ["DEVICE_BS", "abc"]),
    (["start", "--profile", "cpu-demo", "--device-bs", "3"], {}, ["divide"]),
    (["start", "--profile", "cpu-demo", "--grace", "soon"], {}, ["grace"]),
    (["start", "--profile", "cpu-demo", "--stages", "warp"], {}, ["unknown stage"]),
    (["status", "20990101-000000-nope"], {}, ["no run"]),
    (["stop", "nope"], {}, ["no run"]),
    (["resume", "nope"], {}, ["no run"]),
    (["attach"], {}, ["no run to attach"]),
    (["logs"], {}, ["no runs"]),
    (["run", "--", "definitely-not-a-command-xyz"], {}, ["command not found"]),
    (["run"], {}, ["nothing to run"]),
    (["frobnicate"], {}, ["invalid choice"]),
    (["start", "--profile", "cpu-demo", "--grace", "inf"], {}, ["grace"]),
    (["start", "--profile", "cpu-demo", "--stop-timeout", "-1"], {}, ["--stop-timeout"]),
    (["start", "--profile", "cpu-demo", "--stages", ","], {}, ["--stages names no stage"]),
    (["start", "--profile", "4090", "--device-bs", "3"], {}, ["does not divide"]),
    (["start", "--profile", "4090"], {"NPROC_PER_NODE": "0"}, ["NPROC_PER_NODE"]),
    (["start", "--profile", "4090"], {"SEQ_LEN": "-1"}, ["SEQ_LEN"]),
    (["doctor", "--profile", "nope"], {}, ["unknown profile"]),
    (["logs", "--bytes", "0"], {}, ["--bytes"]),
])
def test_user_mistakes_are_one_line_exit_2(base_dir, args, env, words):
    assert_usage_error(cli(*args, env=env), *words)
    assert not list((base_dir / "runs").glob("*")) if (base_dir / "runs").exists() else True


def test_commands_work_without_a_gpu(base_dir):
    rd = RunDir.create(base_dir, fake_plan(base_dir, [fake_stage(num_iterations=6, save_every=2, step_time=0.02)],
                                           gpu_interval=0.1))
    from nanotui.runtime.supervisor import spawn_supervisor
    assert spawn_supervisor(rd).wait(30) == 0
    st = json.loads(cli("status", "--json").stdout)
    assert {"run_id", "state", "stage", "step", "total", "device_bs"} <= set(st)
    # step lines are 0-based as the real trainer's (the last one logged is step 5 of 6); a finished stage has done 6
    assert st["state"] == "done" and st["step"] == 6 and st["total"] == 6 and st["device_bs"] == 8
    r = cli("ls")
    assert r.returncode == 0 and rd.run_id in r.stdout
    r = cli("logs", rd.run_id)
    assert r.returncode == 0 and "step 00005/00006" in r.stdout and "Checkpoint saved: step 000006" in r.stdout
    r = cli("ckpts", "--json")
    assert r.returncode == 0 and sorted(c["step"] for c in json.loads(r.stdout)) == [2, 4, 6]
    r = cli("attach", rd.run_id)  # not a TTY: plain status, returns since the run is over
    assert r.returncode == 0 and "done" in r.stdout
    r = cli("doctor", "--profile", "cpu-demo", timeout=120)
    assert r.returncode == 0 and "[" in r.stdout and "logind" in r.stdout and "wandb" in r.stdout
    samples = rd.read_gpu()
    assert samples, "the supervisor recorded no GPU samples"
    from nanotui.runtime.gpu import open_backend
    if not open_backend().available:
        assert samples[-1]["available"] is False and samples[-1]["reason"]
        assert "nvml" in r.stdout.lower()


def test_run_any_command_detached(base_dir, tmp_path):
    marker = tmp_path / "ran"
    r = cli("run", "--", "sh", "-c", f"echo hello; touch {marker}")
    assert r.returncode == 0, r.stderr
    run_id = r.stdout.split()[2]
    rd = RunDir.open(base_dir, run_id)
    deadline = time.monotonic() + 30
    while rd.read_state()["phase"] != "done":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert marker.exists() and "hello" in rd.list_logs()[0].read_text()
    assert json.loads(cli("status", "--json", run_id).stdout)["state"] == "done"


def test_stop_without_supervisor_kills_the_recorded_group(base_dir):
    import signal
    from nanotui.runtime.supervisor import spawn_supervisor
    rd = RunDir.create(base_dir, fake_plan(base_dir, [fake_stage(num_iterations=10000, step_time=0.02)],
                                           stop_timeout=5))
    sup = spawn_supervisor(rd)
    deadline = time.monotonic() + 20
    while (rd.read_state().get("step") or 0) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.kill(sup.pid, signal.SIGKILL)
    sup.wait()
    r = cli("stop", rd.run_id)
    assert r.returncode == 0 and "stopped" in r.stdout
    from nanotui.runtime import procs
    st = rd.read_state()
    assert st["phase"] == "stopped" and not procs.group_alive(rd.read_events()[-1]["pgid"])


def test_unwritable_base_dir_is_one_line(tmp_path):
    not_a_dir = tmp_path / "a_file"
    not_a_dir.write_text("x")
    for args in (["start", "--profile", "cpu-demo"], ["run", "--", "true"]):
        assert_usage_error(cli(*args, env={"NANOCHAT_BASE_DIR": str(not_a_dir / "base")}), "NANOCHAT_BASE_DIR")
    assert not_a_dir.read_text() == "x"


@pytest.fixture
def recorded_runs(base_dir):
    """Two recorded runs (tests/fixtures/runs): a finished one and one whose supervisor died mid base_train."""
    fixtures = REPO / "tests" / "fixtures" / "runs"
    for scenario, run_id in (("finished", "20260101-100000-cpu-demo"), ("mid_training", "20260101-110000-cpu-demo")):
        src = fixtures / scenario
        (src_run,) = (src / "runs").iterdir()
        shutil.copytree(src_run, base_dir / "runs" / run_id)
        for ckpts in src.glob("*_checkpoints"):
            shutil.copytree(ckpts, base_dir / ckpts.name, dirs_exist_ok=True)
            for meta in ckpts.glob("*/meta_*.json"):  # the copy is that run under a new id: its lineage too
                dst = base_dir / meta.relative_to(src)
                dst.write_text(json.dumps(dict(json.loads(dst.read_text()), run_id=run_id), indent=2))
        rd = RunDir(base_dir / "runs" / run_id)
        rd.write_plan(dict(rd.read_plan(), base_dir=str(base_dir), cwd=str(base_dir)))
    return base_dir


def test_ambiguous_prefix_lists_the_matches(recorded_runs):
    assert_usage_error(cli("status", "2026"), "ambiguous", "20260101-100000-cpu-demo", "20260101-110000-cpu-demo")
    assert cli("status", "20260101-11").returncode == 0


def test_logs_follow_ends_when_nothing_can_write(recorded_runs):
    # the recorded mid-training run says "running" in state.json but its supervisor and stage are long gone
    for run_id in ("20260101-100000", "20260101-110000"):
        r = cli("logs", "-f", run_id, timeout=20)
        assert r.returncode == 0 and r.stdout and "Traceback" not in r.stderr


def test_resume_to_a_missing_step_or_bad_batch_starts_nothing(recorded_runs):
    rd = RunDir(recorded_runs / "runs" / "20260101-110000-cpu-demo")
    state_before = rd.state_json.read_bytes()
    assert_usage_error(cli("resume", rd.run_id, "--step", "999"), "no checkpoint of run", "at step 999", "valid steps: 75")
    assert_usage_error(cli("resume", rd.run_id, "--device-bs", "3"), "does not divide", "try 4, 2, 1")
    assert rd.state_json.read_bytes() == state_before and not rd.supervisor_alive()
    assert not rd.supervisor_log.exists()


def test_corrupt_run_files_are_reported_not_crashed_on(recorded_runs):
    done = RunDir(recorded_runs / "runs" / "20260101-100000-cpu-demo")
    mid = RunDir(recorded_runs / "runs" / "20260101-110000-cpu-demo")
    mid.state_json.write_text('{"phase": "runn')  # torn by hand
    with open(done.events_path, "a") as f:
        f.write('[1, 2]\n"text"\n{"broken\n')
    r = cli("ls")
    assert r.returncode == 0 and "corrupt" in r.stdout and "Traceback" not in r.stderr
    r = cli("status", mid.run_id)
    assert r.returncode == 0 and "corrupt" in r.stdout and "state.json is unreadable" in r.stdout
    assert json.loads(cli("status", "--json", mid.run_id).stdout)["problem"].startswith("state.json")
    r = cli("attach", mid.run_id, timeout=20)  # not a TTY: the plain status, which ends for a dead run
    assert r.returncode == 0 and "state.json is unreadable" in r.stdout
    # resuming from a blank state would restart the pipeline at its first stage: refused, nothing touched
    assert_usage_error(cli("resume", mid.run_id), "state.json is unreadable")
    assert mid.state_json.read_text() == '{"phase": "runn' and not mid.supervisor_log.exists()
    # non-object lines in events.jsonl are skipped by every reader (the dashboard's model included)
    assert all(isinstance(ev, dict) for ev in done.read_events())
    from nanotui.tui.model import RunView
    view = RunView(done.path)
    view.attach()
    view.load_history()
    view.poll()
    done.run_json.write_text("not json")
    r = cli("ckpts", done.run_id)
    assert_usage_error(r, "run.json")
    assert cli("status", done.run_id).returncode == 0
