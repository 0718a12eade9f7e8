"""Supervisor with the fake trainer: OOM fallback/grace/B=1, SIGKILL re-adoption, lock, stop + resume, crashes."""
import json
import os
import signal
import sys
import time
from pathlib import Path


from nanotui.runtime import procs
from nanotui.runtime.control import ControlClient
from nanotui.runtime.rundir import RunDir
from nanotui.runtime.supervisor import spawn_supervisor

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "fixtures"))
from fake_trainer import fake_stage  # noqa: E402
from supervisor_helpers import cli, launch, wait_for  # noqa: E402


def types_of(rd):
    return [e["type"] for e in rd.read_events()]


def step_lines(log: Path):
    return [int(l.split()[1].split("/")[0]) for l in log.read_text().splitlines() if l.startswith("step ")]


def test_oom_fallback_grace_zero_keeps_every_step(base_dir, monkeypatch):
    monkeypatch.setenv("NANOCHAT_FAULT_OOM_ABOVE_BS", "2")
    monkeypatch.setenv("FAKE_OOM_AFTER_STEP", "6")
    rd, sup = launch(base_dir, [fake_stage(device_bs=8, num_iterations=12, save_every=4, step_time=0.02)], grace=0)
    assert sup.wait(60) == 0
    st = rd.read_state()
    assert st["phase"] == "done" and st["device_bs"] == 2 and st["stages"][0]["attempts"] == 3
    evs = rd.read_events()
    falls = [(e["from_bs"], e["to_bs"]) for e in evs if e["type"] == "fallback"]
    assert falls == [(8, 4), (4, 2)]
    ooms = [e for e in evs if e["type"] == "oom"]
    assert [o["emergency_step"] for o in ooms] == [6, 6] and all(o["exit_code"] == 3 for o in ooms)
    assert types_of(rd)[-2:] == ["stage_done", "done"]
    logs = rd.list_logs()
    third = [e for e in evs if e["type"] == "stage_started" and e["attempt"] == 3][0]
    assert "--device_batch_size=2" in third["argv"] and "--resume_from_step=latest" in third["argv"]
    assert "Resuming optimization from step 6 (device batch size 2, gradient accumulation steps 4)" \
        in logs[2].read_text()
    assert "OOM: CUDA out of memory at device_batch_size=8, step 7; emergency checkpoint: step 000006" \
        in logs[0].read_text()
    # no step lost or repeated: attempt 1 ran steps 0..5, attempt 2 OOMed in step 6 at once, attempt 3 ran 6..11
    assert step_lines(logs[0]) + step_lines(logs[1]) + step_lines(logs[2]) == list(range(0, 12))
    assert "Total batch size 64" in logs[2].read_text()  # total batch unchanged at B=2
    assert json.loads(RunDir.exit_path(logs[0]).read_text())["exit_code"] == 3


def test_grace_off_waits_for_a_command(base_dir, monkeypatch):
    monkeypatch.setenv("NANOCHAT_FAULT_OOM_ABOVE_BS", "2")
    rd, sup = launch(base_dir, [fake_stage(device_bs=4, num_iterations=6, step_time=0.02)], grace="off")
    wait_for(lambda: rd.read_state()["phase"] == "waiting", what="waiting")
    time.sleep(1.0)
    st = rd.read_state()
    assert st["phase"] == "waiting" and st["pending_oom"]["ladder"] == [2, 1]
    assert st["pending_oom"]["deadline"] is None and sup.poll() is None
    c = ControlClient(rd)
    assert c.request("fallback", device_bs=3)["ok"] is False  # not on the ladder
    assert c.request("set_grace", grace="soon")["ok"] is False
    assert c.request("status")["summary"]["state"] == "waiting"
    assert json.loads(cli("status", "--json").stdout)["state"] == "waiting"
    assert c.request("fallback", device_bs=2)["ok"] is True
    assert sup.wait(30) == 0
    assert rd.read_state()["phase"] == "done" and rd.read_state()["device_bs"] == 2
    t = types_of(rd)
    assert t.index("oom") < t.index("waiting") < t.index("command") < t.index("fallback")


def test_set_grace_from_off_to_zero_acts(base_dir, monkeypatch):
    monkeypatch.setenv("NANOCHAT_FAULT_OOM_ABOVE_BS", "1")
    rd, sup = launch(base_dir, [fake_stage(device_bs=2, num_iterations=4, step_time=0.02)], grace="off")
    wait_for(lambda: rd.read_state()["phase"] == "waiting", what="waiting")
    assert ControlClient(rd).request("set_grace", grace=0)["ok"]
    assert sup.wait(30) == 0 and rd.read_state()["device_bs"] == 1


def test_oom_at_batch_one_stops_with_reason(base_dir, monkeypatch):
    monkeypatch.setenv("NANOCHAT_FAULT_OOM_ABOVE_BS", "0")
    rd, sup = launch(base_dir, [fake_stage(device_bs=1, num_iterations=4)], grace=0)
    assert sup.wait(30) == 0
    st = rd.read_state()
    assert st["phase"] == "stopped" and "device_batch_size=1" in st["reason"]
    assert rd.status_summary()["state"] == "stopped"
    assert "stopped" in types_of(rd) and "fallback" not in types_of(rd)


def test_crash_is_recorded_with_reason(base_dir):
    rd, sup = launch(base_dir, [fake_stage(num_iterations=2, exit_code=1, step_time=0.01),
                                {"name": "after", "argv": ["true"], "env": {}, "trains": False}])
    assert sup.wait(30) == 1
    st = rd.read_state()
    assert st["phase"] == "failed" and "exited with code 1" in st["reason"]
    assert st["stages"][1]["state"] == "pending"  # nothing ran after the crash
    assert types_of(rd)[-2:] == ["crashed", "failed"]


def test_sigkilled_supervisor_is_readopted(base_dir):
    rd, sup = launch(base_dir, [fake_stage(num_iterations=40, save_every=5, step_time=0.05),
                                {"name": "after", "argv": ["true"], "env": {}, "trains": False}])
    wait_for(lambda: (rd.read_state().get("step") or 0) >= 3, what="progress")
    st = rd.read_state()
    os.kill(sup.pid, signal.SIGKILL)
    sup.wait()
    time.sleep(0.3)
    assert procs.pid_matches(st["stage_pid"], st["stage_pid_created"])  # the stage goes on
    assert not rd.supervisor_alive()
    assert json.loads(cli("status", "--json").stdout)["state"] == "running"
    sup2 = spawn_supervisor(rd)
    assert sup2.wait(60) == 0
    st = rd.read_state()
    assert st["phase"] == "done" and st["stages"][0]["exit_code"] == 0 and st["stages"][0]["attempts"] == 1
    evs = rd.read_events()
    adopted = [e for e in evs if e["type"] == "adopted"]
    assert len(adopted) == 1 and adopted[0]["still_running"] is True
    assert [e["type"] for e in evs].count("stage_started") == 2  # base once (adopted, not restarted) + after
    assert st["last_checkpoint"]["step"] == 40


def test_second_supervisor_and_stop_resume_via_cli(base_dir):
    rd, sup = launch(base_dir, [fake_stage(num_iterations=60, save_every=5, step_time=0.05)], stop_timeout=10)
    wait_for(lambda: (rd.read_state().get("last_checkpoint") or {}).get("step", 0) >= 5, what="a checkpoint")
    second = spawn_supervisor(rd)
    assert second.wait(30) == 2
    assert "already has a supervisor" in rd.supervisor_log.read_text()
    r = cli("resume", rd.run_id)
    assert r.returncode == 2 and r.stderr.startswith("error: ") and "already has a supervisor" in r.stderr
    r = cli("stop", rd.run_id)
    assert r.returncode == 0, r.stderr
    assert sup.wait(30) == 0
    st = rd.read_state()
    assert st["phase"] == "stopped" and st["stages"][0]["exit_code"] == 4
    stopped_at = st["last_checkpoint"]["step"]
    assert stopped_at >= 5
    r = cli("resume", rd.run_id)
    assert r.returncode == 0, r.stderr
    wait_for(lambda: rd.read_state()["phase"] == "done", timeout=60, what="done after resume")
    log1, log2 = rd.list_logs()[-2:]
    assert f"Stopped on request (SIGTERM) at step {stopped_at}; checkpoint: step {stopped_at:06d}" \
        in log1.read_text()
    assert step_lines(log1)[-1] == stopped_at - 1  # steps 0..N-1 done: checkpoint N
    assert log2.name.endswith("-a2.log")
    assert f"Resuming optimization from step {stopped_at} (device batch size 8, gradient accumulation steps 1)" \
        in log2.read_text()
    assert step_lines(log2)[0] == stopped_at
    assert "resumed" in types_of(rd)
    wait_for(lambda: not rd.supervisor_alive(), what="supervisor exit")
    r = cli("resume", rd.run_id)
    assert r.returncode == 2 and "already done" in r.stderr
