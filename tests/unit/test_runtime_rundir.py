"""Run directory: creation, atomic state, events, GPU samples tail, lookup of runs."""
import fcntl
import os
import stat

import pytest

from nanotui.runtime.rundir import (RunDir, RunNotFound, find_active_run, list_runs, new_run_id, resolve_run)

PLAN = {"profile": "cpu-demo", "stages": [{"name": "data", "argv": ["true"]}, {"name": "base_train", "argv": ["true"]}]}


def test_create_layout_and_initial_state(base_dir):
    rd = RunDir.create(base_dir, PLAN, run_id="20250101-120000-cpu-demo")
    assert rd.path == base_dir / "runs" / "20250101-120000-cpu-demo"
    assert stat.S_IMODE(rd.path.stat().st_mode) == 0o700
    assert rd.read_plan()["run_id"] == rd.run_id
    st = rd.read_state()
    assert st["phase"] == "starting" and [s["name"] for s in st["stages"]] == ["data", "base_train"]
    assert rd.log_path(3, "base_train", 2).name == "03-base_train-a2.log"
    again = RunDir.create(base_dir, PLAN, run_id="20250101-120000-cpu-demo")
    assert again.run_id != rd.run_id  # same second: no clobbering


def test_run_id_format():
    assert new_run_id("4090", now=0).endswith("-4090")
    assert len(new_run_id("cpu-demo").split("-")[0]) == 8


def test_write_state_is_atomic_replace(base_dir):
    rd = RunDir.create(base_dir, PLAN)
    ino = rd.state_json.stat().st_ino
    rd.update_state(phase="running", step=5)
    assert rd.state_json.stat().st_ino != ino  # renamed over, never rewritten in place
    assert rd.read_state()["step"] == 5
    assert not [p for p in rd.path.iterdir() if p.name.endswith(".tmp")]


def test_events_append_and_resume_offsets(base_dir):
    rd = RunDir.create(base_dir, PLAN)
    rd.append_event("started", a=1)
    rd.append_event("oom", device_bs=8)
    evs = list(rd.iter_events_with_offsets())
    assert [e["type"] for e, _ in evs] == ["started", "oom"]
    with open(rd.events_path, "a") as f:
        f.write('{"t": 1, "type": "torn"')  # a writer mid-line
    assert [e["type"] for e in rd.iter_events(evs[0][1])] == ["oom"]


def test_read_gpu_tail_and_rotation(base_dir):
    rd = RunDir.create(base_dir, PLAN)
    for i in range(50):
        rd.append_gpu({"t": i, "available": False}, max_bytes=600)
    assert (rd.path / "gpu.jsonl.1").exists()
    tail = rd.read_gpu(tail=5)
    assert [s["t"] for s in tail] == [45, 46, 47, 48, 49]
    allv = rd.read_gpu()
    assert allv[-1]["t"] == 49 and allv == sorted(allv, key=lambda s: s["t"])
    assert [s["t"] for s in rd.read_gpu(tail=len(allv) + 10)] == [s["t"] for s in allv]


def test_supervisor_alive_follows_flock(base_dir):
    rd = RunDir.create(base_dir, PLAN)
    assert not rd.supervisor_alive()
    fd = os.open(rd.lock_path, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        import subprocess, sys
        code = ("import sys; from nanotui.runtime.rundir import RunDir; "
                f"sys.exit(0 if RunDir({str(rd.path)!r}).supervisor_alive() else 1)")
        assert subprocess.run([sys.executable, "-c", code]).returncode == 0
    finally:
        os.close(fd)
    assert not rd.supervisor_alive()


def test_lookup(base_dir):
    with pytest.raises(RunNotFound):
        resolve_run(base_dir, None)
    a = RunDir.create(base_dir, PLAN, run_id="20250101-120000-cpu-demo")
    b = RunDir.create(base_dir, PLAN, run_id="20250102-120000-cpu-demo")
    assert [r.run_id for r in list_runs(base_dir)] == [b.run_id, a.run_id]
    assert resolve_run(base_dir, None).run_id == b.run_id  # newest; b is "starting" = live phase
    a.update_state(phase="running")
    b.update_state(phase="done")
    assert find_active_run(base_dir).run_id == a.run_id
    assert resolve_run(base_dir, "20250101").run_id == a.run_id  # unique prefix
    with pytest.raises(RunNotFound):
        resolve_run(base_dir, "2025")  # ambiguous
    with pytest.raises(RunNotFound):
        resolve_run(base_dir, "../etc")
    s = b.status_summary()
    assert s["state"] == "done" and s["stages_total"] == 2 and s["supervisor_alive"] is False
    assert a.status_summary()["state"] == "failed"  # says running, but nothing is alive


def test_state_write_is_complete_even_with_short_writes(base_dir, monkeypatch):
    """A short os.write (signal, nearly full disk) is retried: state.json is never a truncated prefix."""
    import json
    import nanotui.runtime.rundir as rdm
    rd = RunDir.create(base_dir, PLAN)
    real = os.write
    monkeypatch.setattr(rdm.os, "write", lambda fd, data: real(fd, bytes(data[:7])))
    rd.update_state(phase="running", step=123, reason="x" * 500)
    monkeypatch.undo()
    assert json.loads(rd.state_json.read_text())["step"] == 123


def test_state_write_on_a_full_disk_changes_nothing_and_leaks_no_temp(base_dir, monkeypatch):
    import errno
    import nanotui.runtime.rundir as rdm
    rd = RunDir.create(base_dir, PLAN)
    rd.update_state(phase="running", step=1)
    before = rd.state_json.read_bytes()
    real = os.write
    calls = []

    def enospc(fd, data):  # the first bytes fit, then the disk is full
        calls.append(1)
        if len(calls) == 1:
            return real(fd, bytes(data[:10]))
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(rdm.os, "write", enospc)
    with pytest.raises(OSError):
        rd.update_state(step=2)
    with pytest.raises(OSError):
        rd.append_event("checkpoint", stage="base_train", step=2, path="/x")
    monkeypatch.undo()
    assert rd.state_json.read_bytes() == before
    assert not [p for p in rd.path.iterdir() if p.name.endswith(".tmp")]
    rd.append_event("checkpoint", stage="base_train", step=3, path="/x")  # no torn line glued to this one
    assert [e.get("step") for e in rd.read_events()] == [3]


def test_wrongly_shaped_state_is_a_problem_not_a_crash(base_dir):
    rd = RunDir.create(base_dir, PLAN)
    rd.state_json.write_text('{"phase": "running", "stage_index": "1", "stages": []}')
    assert "stage_index" in rd.state_problem()
    s = rd.status_summary()
    assert s["state"] == "corrupt" and "stage_index" in s["problem"] and s["stage_index"] == 0
    assert rd.read_state()["phase"] == "starting"  # callers get a well-formed dict, never the bad one
