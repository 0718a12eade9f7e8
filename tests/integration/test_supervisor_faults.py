"""Supervisor under faults (issue 8): one run per checkpoint dir, a logout's SIGTERM, OOM only at the end, a full
disk, a failed spawn, a wrongly shaped state.json, `--set` on plan fields, escapes in reasons, carried batch size."""
import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nanotui.runtime.control import ControlClient
from nanotui.runtime.rundir import RunDir
from nanotui.runtime.supervisor import spawn_supervisor, stage_argv

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "fixtures"))
from fake_trainer import fake_plan, fake_stage  # noqa: E402
from supervisor_helpers import cli, launch, wait_for  # noqa: E402


def one_error_line(r, code=2):
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "Traceback" not in r.stdout + r.stderr
    return lines[0]


def command_stage(name, script, trains=True):
    st = fake_stage(name=name)
    st["argv"] = ["bash", "-c", script]
    st["trains"] = trains
    return st


# ---- item 3: two runs on one checkpoint directory ------------------------------------------------------------
def test_second_start_on_the_same_checkpoint_dir_is_refused(base_dir):
    from nanotui.runtime.launch import StartError, profile_plan
    stage = fake_stage(num_iterations=400, step_time=0.05)
    stage["ckpt_subdir"] = "base_checkpoints/demo"  # what cpu-demo's base_train writes
    rd, sup = launch(base_dir, [stage])
    try:
        wait_for(lambda: rd.read_state().get("phase") == "running", what="running")
        before = sorted(p.name for p in (base_dir / "runs").glob("2*"))
        line = one_error_line(cli("start", "--profile", "cpu-demo"))
        assert rd.run_id in line and "base_checkpoints/demo" in line and "nanotui stop" in line
        # the TUI's new-run dialog goes through the same start path and the same check
        from nanotui.tui.app import RunActions
        with pytest.raises(StartError, match=rd.run_id):
            RunActions().start(base_dir, "cpu-demo", {})
        assert sorted(p.name for p in (base_dir / "runs").glob("2*")) == before  # nothing created
        # another model tag is another directory: allowed (checked without running it: only the refusal matters)
        plan = profile_plan("cpu-demo", {}, "base_train", ["base_train:--model_tag=other"])
        from nanotui.runtime.launch import conflicting_run
        assert conflicting_run(plan, base_dir) is None
    finally:
        ControlClient(rd).request("stop")
        sup.wait(30)
    # once the first run is over, the same start is no longer refused by the check
    from nanotui.runtime.launch import conflicting_run
    assert conflicting_run(profile_plan("cpu-demo", {}), base_dir) is None


# ---- item 4: a logout SIGTERMs the supervisor and the stage: no second SIGTERM ---------------------------------
def test_logout_sigterm_to_supervisor_and_stage_sends_no_second_sigterm(base_dir):
    rd, sup = launch(base_dir, [fake_stage(num_iterations=400, save_every=0, step_time=0.05, save_time=2.0)],
                     stop_timeout=30)
    wait_for(lambda: (rd.read_state().get("step") or 0) >= 3, what="progress")
    st = rd.read_state()
    # what systemd does at logout: SIGTERM to every process of the session, supervisor and stage alike
    os.killpg(st["stage_pid"], signal.SIGTERM)
    os.kill(sup.pid, signal.SIGTERM)
    assert sup.wait(60) == 0
    log = (rd.path / st["log"]).read_text()
    assert log.count("signal SIGTERM received") == 1, log[-2000:]
    st = rd.read_state()
    assert st["phase"] == "stopped" and st["stages"][0]["exit_code"] == 4
    stopping = [e for e in rd.read_events() if e["type"] == "stopping"]
    assert stopping and "not sending another" in stopping[0]["message"]


def test_supervisor_sigterm_alone_still_stops_the_stage_cleanly(base_dir):
    rd, sup = launch(base_dir, [fake_stage(num_iterations=400, save_every=0, step_time=0.05)], stop_timeout=30)
    wait_for(lambda: (rd.read_state().get("step") or 0) >= 3, what="progress")
    log = rd.path / rd.read_state()["log"]
    os.kill(sup.pid, signal.SIGTERM)
    assert sup.wait(60) == 0
    text = log.read_text()
    assert text.count("signal SIGTERM received") == 1 and "Stopped on request (SIGTERM)" in text
    assert rd.read_state()["phase"] == "stopped"


# ---- item 6: an OOM-looking line is not an OOM; the real error is shown ---------------------------------------
def test_oom_line_followed_by_another_error_is_that_error(base_dir):
    script = ("echo 'sample: torch.OutOfMemoryError: CUDA out of memory'; "
              "echo 'OOM: CUDA out of memory at device_batch_size=8, step 3; emergency checkpoint: step 000002'; "
              "echo 'Traceback (most recent call last):' >&2; "
              "echo \"FileNotFoundError: [Errno 2] No such file or directory: 'tokenizer.pkl'\" >&2; exit 1")
    rd, sup = launch(base_dir, [command_stage("base_train", script)], grace=0)
    assert sup.wait(30) == 1
    st = rd.read_state()
    kinds = [e["type"] for e in rd.read_events()]
    assert "oom" not in kinds and "fallback" not in kinds and st["phase"] == "failed"
    assert "FileNotFoundError" in st["reason"] and "tokenizer.pkl" in st["reason"]
    assert st["stages"][0]["attempts"] == 1


def test_oom_signature_at_the_end_is_still_an_oom(base_dir):
    script = ("echo 'step 00000/00010 (0.00%) | loss: 5.0 | lrm: 1.00 | dt: 10.00ms | tok/sec: 1 | mfu: n/a | "
              "total time: 0.00m'; echo 'Traceback (most recent call last):' >&2; "
              "echo 'torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB' >&2; exit 1")
    stage = command_stage("base_train", script)
    stage["device_bs"] = 1  # nothing to fall back to: the run stops on the OOM (no restart loop in this test)
    rd, sup = launch(base_dir, [stage], grace=0)
    assert sup.wait(30) == 0
    assert "oom" in [e["type"] for e in rd.read_events()]
    assert rd.read_state()["phase"] == "stopped" and "device_batch_size=1" in rd.read_state()["reason"]


# ---- item 8: a stage that cannot start ------------------------------------------------------------------------
def test_failed_spawn_marks_the_stage_failed_and_resume_tells_the_truth(base_dir, tmp_path):
    gone = tmp_path / "deleted-cwd"
    gone.mkdir()
    plan = fake_plan(base_dir, [fake_stage(num_iterations=4)])
    plan["cwd"] = str(gone)
    rd = RunDir.create(base_dir, plan)
    gone.rmdir()
    sup = spawn_supervisor(rd)
    assert sup.wait(30) == 1
    assert "Traceback" not in rd.supervisor_log.read_text()
    st = rd.read_state()
    assert st["phase"] == "failed" and st["stages"][0]["state"] == "failed"
    assert "cannot start" in st["reason"] and str(gone) in st["reason"]
    assert [e["type"] for e in rd.read_events()][-2:] == ["spawn_failed", "failed"]
    r = cli("resume", rd.run_id)
    line = one_error_line(r, code=1)
    assert "did not start" in line and "cannot start" in line and "resumed" not in r.stdout


# ---- item 9: state.json that is valid JSON but the wrong shape ----------------------------------------------
@pytest.mark.parametrize("state,words", [
    ({}, ["empty object"]),
    ({"phase": "running", "stage_index": "2", "stages": []}, ["stage_index"]),
    ({"phase": "running", "stage_index": 7, "stages": [{"name": "base_train", "state": "running"}]}, ["past the plan"]),
    ({"phase": "running", "stages": {"a": 1}}, ["stages"]),
    ([1, 2], ["list"]),
])
def test_wrongly_shaped_state_is_corrupt_not_a_traceback(base_dir, state, words):
    rd = RunDir.create(base_dir, fake_plan(base_dir, [fake_stage(num_iterations=4)]))
    rd.state_json.write_text(json.dumps(state))
    for args in (("status",), ("status", "--json"), ("ls",)):
        r = cli(*args, rd.run_id) if args != ("ls",) else cli("ls")
        assert r.returncode == 0 and "Traceback" not in r.stdout + r.stderr, r.stderr
        assert "corrupt" in r.stdout
    s = json.loads(cli("status", "--json", rd.run_id).stdout)
    assert s["state"] == "corrupt" and all(w in s["problem"] for w in words), s["problem"]
    sup = spawn_supervisor(rd)
    assert sup.wait(30) == 2
    log = rd.supervisor_log.read_text()
    assert "Traceback" not in log and "wrong shape" in log or "unreadable" in log
    line = one_error_line(cli("resume", rd.run_id))
    assert "cannot resume" in line


# ---- item 10: --set on the fields the supervisor owns ----------------------------------------------------------
def test_set_device_batch_and_total_batch_reach_the_plan_fields():
    from nanotui.runtime.launch import profile_plan
    plan = profile_plan("cpu-demo", {}, None, ["base_train:--device_batch_size=4",
                                              "mid_train:--total_batch_size=16384"])
    base = next(s for s in plan["stages"] if s["name"] == "base_train")
    mid = next(s for s in plan["stages"] if s["name"] == "mid_train")
    assert base["device_bs"] == 4 and "--device_batch_size=4" in stage_argv(base, base["device_bs"], None)
    assert mid["total_batch_size"] == 16384 and "--total_batch_size=16384" in mid["argv"]
    from nanotui.core.oom import fallback_ladder
    assert fallback_ladder(mid["device_bs"], mid["total_batch_size"], mid["seq_len"]) == [4, 2, 1]


@pytest.mark.parametrize("item,words", [
    ("base_train:--device_batch_size=3", ["does not divide"]),
    ("base_train:--device_batch_size=0", ["positive integer"]),
    ("base_train:--total_batch_size=1000", ["does not divide"]),
    ("base_train:--resume_from_step=5", ["nanotui resume --step"]),
])
def test_set_refuses_what_the_plan_cannot_take(base_dir, item, words):
    line = one_error_line(cli("start", "--profile", "cpu-demo", "--set", item))
    assert all(w in line for w in words), line
    assert not (base_dir / "runs").exists() or not list((base_dir / "runs").glob("2*"))


# ---- item 11: terminal escapes from logs never reach the terminal ---------------------------------------------
def test_status_and_attach_strip_terminal_escapes(base_dir):
    script = "printf 'error: \\033]0;pwned\\007bad \\033[31mthing\\033[0m\\n'; exit 1"
    rd, sup = launch(base_dir, [command_stage("step", script, trains=False)])
    assert sup.wait(30) == 1
    assert "\x1b" not in rd.read_state()["reason"] and "bad thing" in rd.read_state()["reason"]
    # a state written by an older supervisor may hold raw log text: it is never printed raw
    st = rd.read_state()
    st["reason"] = "step: exited with code 1 (\x1b]0;pwned\x07bad \x1b[31mthing\x1b[0m\x9b2J)"
    rd.write_state(st)
    for args in (("status", rd.run_id), ("status", "--json", rd.run_id), ("attach", rd.run_id)):
        out = cli(*args).stdout
        assert "\x1b" not in out and "\x07" not in out and "\x9b" not in out and "bad" in out, repr(out)


# ---- item 12: a fallback batch size carries to later stages at the same sequence length -----------------------
def test_fallback_batch_size_carries_to_the_next_stage_with_the_same_seq_len(base_dir):
    base = fake_stage(name="base_train", device_bs=8, num_iterations=6, save_every=2, step_time=0.01)
    base["env"] = {"NANOCHAT_FAULT_OOM_ABOVE_BS": "2", "FAKE_OOM_AFTER_STEP": "2"}
    mid = fake_stage(name="mid_train", device_bs=8, num_iterations=4, step_time=0.01, model_tag="mid")
    sft = fake_stage(name="chat_sft", device_bs=4, num_iterations=4, step_time=0.01, model_tag="sft")
    sft["seq_len"] = None  # SFT has no sequence length of its own: keeps its batch size
    rd, sup = launch(base_dir, [base, mid, sft], grace=0)
    assert sup.wait(60) == 0
    evs = rd.read_events()
    started = {e["stage"]: e for e in reversed([e for e in evs if e["type"] == "stage_started"])}
    assert started["mid_train"]["device_bs"] == 2 and "--device_batch_size=2" in started["mid_train"]["argv"]
    assert started["chat_sft"]["device_bs"] == 4
    carried = [e for e in evs if e["type"] == "carried_bs"]
    assert len(carried) == 1 and carried[0]["stage"] == "mid_train" and carried[0]["from_stage"] == "base_train"
    assert "device_batch_size=2" in carried[0]["message"]
    assert not [e for e in evs if e["type"] == "oom" and e["stage"] != "base_train"]
    assert rd.read_state()["carried_bs"] == {"8": 2}


# ---- item 7: a full disk -------------------------------------------------------------------------------------
@pytest.fixture
def small_tmpfs(tmp_path):
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({r.stderr.strip() or 'mount failed'}): the ENOSPC test "
                    f"needs root or CAP_SYS_ADMIN")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def fill(path: Path) -> Path:
    filler = path / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 1024)
    except OSError as e:
        assert e.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return filler


def test_disk_full_supervisor_survives_and_says_so(small_tmpfs, tmp_path, monkeypatch):
    ckpt_base = tmp_path / "ckpts"  # checkpoints elsewhere: this is about the run directory's own writes
    ckpt_base.mkdir()
    stage = fake_stage(num_iterations=100000, save_every=0, step_time=0.05)
    stage["env"] = {"NANOCHAT_BASE_DIR": str(ckpt_base)}
    rd, sup = launch(small_tmpfs, [stage], stop_timeout=10)
    wait_for(lambda: (rd.read_state().get("step") or 0) >= 2, what="progress")
    filler = fill(small_tmpfs)
    c = ControlClient(rd)
    wait_for(lambda: (c.request("status")["state"].get("problem") or "").startswith("disk full"),
             what="disk full reported", timeout=30)
    time.sleep(1.0)
    assert sup.poll() is None  # still supervising
    on_disk = json.loads(rd.state_json.read_text())  # complete JSON (never a truncated file) ...
    assert on_disk["problem"].startswith("disk full")  # ... that says so, thanks to the reserve
    assert "disk full" in cli("status", rd.run_id, env={"NANOCHAT_BASE_DIR": str(small_tmpfs)}).stdout
    assert not list(rd.path.glob(".state.json.*.tmp"))  # no leaked temp file
    assert "Traceback" not in rd.supervisor_log.read_text()
    filler.unlink()
    wait_for(lambda: rd.read_state().get("problem") is None, timeout=30, what="disk ok")
    assert c.request("stop")["ok"]
    assert sup.wait(30) == 0
    kinds = [e["type"] for e in rd.read_events()]
    assert "disk_full" in kinds and "disk_ok" in kinds
    assert not list(rd.path.glob(".state.json.*.tmp"))


def test_checkpoints_go_to_the_runs_base_dir_not_an_inherited_one(base_dir, tmp_path, monkeypatch):
    """Two runs under different base dirs can get the same run id (ids are unique per runs/ folder, to the second).
    Their stages must write under their own base dir: had they used the NANOCHAT_BASE_DIR the supervisor inherited,
    both would share one checkpoint folder, and the second run's fallback would resume from the first run's final
    step (seen on CI: a run that finished without training)."""
    elsewhere = tmp_path / "inherited"
    elsewhere.mkdir()
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(elsewhere))
    monkeypatch.setenv("NANOCHAT_FAULT_OOM_ABOVE_BS", "2")
    monkeypatch.setenv("FAKE_OOM_AFTER_STEP", "3")
    runs = []
    for name in ("first", "second"):
        base = base_dir / name
        base.mkdir()
        plan = fake_plan(base, [fake_stage(device_bs=4, num_iterations=6, save_every=3, step_time=0.01)])
        rd = RunDir.create(base, plan, run_id="20261204-120000-same")
        assert spawn_supervisor(rd).wait(60) == 0
        runs.append(rd)
    for rd in runs:
        steps = [line.split()[1] for log in rd.list_logs() for line in log.read_text().splitlines()
                 if line.startswith("step ")]
        assert steps == [f"{s:05d}/00006" for s in range(6)], (rd.path, steps)
        ckpts = Path(rd.read_plan()["base_dir"]) / "base_checkpoints" / "fake"
        assert sorted(p.name for p in ckpts.glob("meta_*.json")) == ["meta_000003.json", "meta_000006.json"]
    assert not (elsewhere / "base_checkpoints").exists()
