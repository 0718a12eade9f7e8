"""nanotui supervising upstream karpathy/nanochat's own scripts on CPU (slow; skipped without the snapshot).

2026 base_train: killed after its step-20 checkpoint and resumed in its own dialect; an injected OOM falling back
to half the batch at the same total batch. 2025-11 base_train: an OOM waits for consent before restarting from
step 0. A bash script: each training stage becomes a supervised run of its own. See tests/integration/upstream_env.py.
"""
import json
import os
import signal
import time

import pytest

from nanotui.runtime.control import ControlClient
from nanotui.runtime.dialects import newest_committed_step
from nanotui.runtime.procs import pid_matches
from nanotui.runtime.rundir import list_runs

from upstream_env import REV_2025_11, upstream  # noqa: E402 (tests/integration is on sys.path)

pytestmark = pytest.mark.slow

TINY_2026 = ["--device-type=cpu", "--depth=2", "--head-dim=64", "--window-pattern=L", "--max-seq-len=128",
             "--eval-every=-1", "--core-metric-every=-1", "--sample-every=-1", "--run=dummy"]
TINY_2025 = ["--device_type=cpu", "--depth=2", "--max_seq_len=128", "--eval_every=100", "--eval_tokens=1024",
             "--core_metric_every=-1", "--sample_every=100", "--run=dummy"]


def wait_for(pred, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def only_run(base):
    runs = list_runs(base)
    assert len(runs) == 1, [r.run_id for r in runs]
    return runs[0]


def events(rd, kind):
    return [e for e in rd.read_events() if e.get("type") == kind]


def phase(rd):
    return rd.read_state().get("phase")


def dump(rd):
    logs = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in rd.list_logs())
    return f"state={json.dumps(rd.read_state())[:1500]}\nsupervisor.log={rd.supervisor_log.read_text()[-1500:]}\n{logs}"


def finished(rd, timeout=420):
    wait_for(lambda: phase(rd) in ("done", "failed", "stopped") and not rd.supervisor_alive(), timeout,
             f"run {rd.run_id} to end")
    assert phase(rd) == "done", dump(rd)


def test_2026_base_train_killed_after_step_20_resumes_there_in_its_own_dialect(tmp_path):
    up = upstream("HEAD", tmp_path)
    pause = tmp_path / "hold"
    pause.touch()
    env = up.env(NANOTUI_SAVE_EVERY=10, NANOTUI_TEST_PAUSE_AT_STEP=20, NANOTUI_TEST_PAUSE_FILE=pause)
    cmd = [up.python, "-m", "scripts.base_train", *TINY_2026, "--device-batch-size=2", "--total-batch-size=512",
           "--num-iterations=24", "--model-tag=t"]
    r = up.nanotui("run", "--", *cmd, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "adds --save-every=10" in r.stdout          # said so to the user ...
    rd = only_run(up.base_dir)
    stage = rd.read_plan()["stages"][0]                # ... and recorded in the run
    assert stage["dialect"]["version"] == "2026" and stage["save_every_added"] and stage["save_every"] == 10
    assert "--save-every=10" in stage["argv"]
    assert events(rd, "dialect")[0]["save_every"] == 10
    ckpt_dir = up.base_dir / "base_checkpoints" / "t"
    wait_for(lambda: newest_committed_step(str(ckpt_dir)) == 20 and "step 00020/" in rd.list_logs()[0].read_text(),
             300, "the step-20 checkpoint")
    st = rd.read_state()
    os.kill(st["supervisor_pid"], signal.SIGKILL)      # the machine "crashes": supervisor and stage die at once
    os.killpg(st["stage_pid"], signal.SIGKILL)
    wait_for(lambda: not pid_matches(st["stage_pid"], st["stage_pid_created"]) and not rd.supervisor_alive(), 30,
             "the killed processes to go")
    pause.unlink()
    r = up.nanotui("resume", rd.run_id, env=up.env())
    assert r.returncode == 0, r.stdout + r.stderr
    finished(rd)
    resumed = events(rd, "resumed")[-1]
    assert "committed step 20 (--resume-from-step=20)" in resumed["message"]
    argv2 = events(rd, "stage_started")[-1]["argv"]
    assert "--resume-from-step=20" in argv2 and not any(a.startswith("--resume_from_step") for a in argv2)
    log2 = rd.list_logs()[-1].read_text()
    assert "Resuming optimization from step 20" in log2 and "step 00023/00024" in log2
    assert "step 00005/" not in log2                   # it did not start over
    assert json.loads((ckpt_dir / "meta_000024.json").read_text())["step"] == 24


def test_2026_injected_oom_falls_back_to_half_the_batch_keeping_the_total(tmp_path):
    up = upstream("HEAD", tmp_path)
    env = up.env(NANOTUI_TEST_OOM_AT_STEP=12, NANOTUI_TEST_OOM_ABOVE_BS=2)
    cmd = [up.python, "-m", "scripts.base_train", *TINY_2026, "--device-batch-size=4", "--total-batch-size=1024",
           "--save-every=5", "--num-iterations=16", "--model-tag=t"]
    r = up.nanotui("run", "--grace", "0", "--", *cmd, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    rd = only_run(up.base_dir)
    assert rd.read_plan()["stages"][0].get("save_every_added") is None   # the user's own --save-every is kept
    finished(rd)
    oom, fb = events(rd, "oom")[0], events(rd, "fallback")[0]
    assert oom["device_bs"] == 4 and fb["from_bs"] == 4 and fb["to_bs"] == 2
    assert "committed step 10" in fb["message"]
    argv2 = events(rd, "stage_started")[-1]["argv"]
    assert "--device-batch-size=2" in argv2 and "--resume-from-step=10" in argv2 and "--total-batch-size=1024" in argv2
    assert "--device-batch-size=4" not in argv2
    log1, log2 = (p.read_text() for p in rd.list_logs())
    assert "OutOfMemoryError" in log1
    assert "Total batch size 1,024 => gradient accumulation steps: 2" in log1
    assert "Total batch size 1,024 => gradient accumulation steps: 4" in log2   # same total, more accumulation
    assert "Resuming optimization from step 10" in log2 and "step 00015/00016" in log2


def test_2025_11_oom_asks_before_restarting_from_scratch(tmp_path):
    up = upstream(REV_2025_11, tmp_path)
    env = up.env(NANOTUI_TEST_OOM_AT_STEP=3, NANOTUI_TEST_OOM_ABOVE_BS=2)
    cmd = [up.python, "-m", "scripts.base_train", *TINY_2025, "--device_batch_size=4", "--total_batch_size=1024",
           "--num_iterations=6", "--model_tag=t"]
    r = up.nanotui("run", "--", *cmd, env=env)          # no --grace: no consent given up front
    assert r.returncode == 0, r.stdout + r.stderr
    assert "cannot resume" in r.stdout
    rd = only_run(up.base_dir)
    assert rd.read_plan()["stages"][0]["dialect"]["version"] == "2025-11"
    pending = wait_for(lambda: rd.read_state().get("pending_oom"), 300, "the OOM decision")
    assert pending["deadline"] is None                  # no automatic choice, whatever the grace
    assert "step 0" in pending["note"] and "lost" in pending["note"]
    time.sleep(3)
    assert rd.read_state()["stages"][0]["attempts"] == 1 and phase(rd) == "waiting"
    wait = events(rd, "waiting")[-1]
    assert wait["deadline"] is None
    reply = ControlClient(rd).request("fallback", device_bs=2)   # what the dashboard's dialog sends
    assert reply["ok"], reply
    finished(rd)
    fb = events(rd, "fallback")[-1]
    assert "step 0" in fb["message"] and "lost" in fb["message"] and "checkpoint" not in fb["message"]
    argv2 = events(rd, "stage_started")[-1]["argv"]
    assert "--device_batch_size=2" in argv2 and not any("resume" in a for a in argv2)
    assert "step 00005/00006" in rd.list_logs()[-1].read_text()


def test_bash_script_training_stages_become_supervised_stages_with_their_own_fallback(tmp_path):
    up = upstream("HEAD", tmp_path)
    venv = os.path.dirname(os.path.dirname(up.python))
    script = tmp_path / "mini_speedrun.sh"
    flags = " ".join(TINY_2026 + ["--device-batch-size=2", "--total-batch-size=256", "--num-iterations=3"])
    # the shape of upstream's runs/speedrun.sh, cut down: a venv activated, a plain line, two trainings (the second
    # launched the way speedrun.sh does: `torchrun --standalone --nproc_per_node=N -m scripts.base_train -- ...`)
    script.write_text(f"""#!/bin/bash
set -u
source {venv}/bin/activate
echo "before training: $(python -c 'print(6*7)')"
python -m scripts.base_train {flags} --model-tag=first
echo "between stages"
torchrun --standalone --nproc_per_node=1 -m scripts.base_train -- {flags} --model-tag=second
echo "after training"
""")
    # every training stage runs out of memory at step 2 with B=2: each falls back on its own and trains on
    env = up.env(NANOTUI_SAVE_EVERY=2, NANOTUI_TEST_OOM_AT_STEP=2, NANOTUI_TEST_OOM_ABOVE_BS=1)
    r = up.nanotui("run", "--grace", "0", "--", "bash", str(script), env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    runs = list_runs(up.base_dir)
    parent = next(rd for rd in runs if rd.read_plan().get("stages", [{}])[0].get("script"))
    finished(parent, timeout=600)
    kids = sorted((rd for rd in list_runs(up.base_dir) if rd.read_plan().get("parent") == parent.run_id),
                  key=lambda rd: rd.read_plan()["created"])
    assert [rd.read_plan()["stages"][0]["name"] for rd in kids] == ["base_train", "base_train"]
    for rd, tag in zip(kids, ("first", "second")):
        assert phase(rd) == "done", dump(rd)
        stage = rd.read_plan()["stages"][0]
        assert stage["trains"] and stage["dialect"]["version"] == "2026" and stage["ckpt_subdir"].endswith(tag)
        assert "--save-every=2" in stage["argv"] and (rd.read_state()["step"], rd.read_state()["total"]) == (3, 3)
        fb = events(rd, "fallback")
        assert [(e["from_bs"], e["to_bs"]) for e in fb] == [(2, 1)] and "committed step 2" in fb[0]["message"]
        assert "--device-batch-size=1" in events(rd, "stage_started")[-1]["argv"]
    subs = [(e["stage"], e["state"]) for e in events(parent, "substage")]
    assert subs == [("base_train", "running"), ("base_train", "done")] * 2
    log = parent.list_logs()[0].read_text()
    assert "before training: 42" in log and "between stages" in log and "after training" in log
    assert log.index("between stages") < log.index(f"supervised as run {kids[1].run_id}")
