"""The plain `bash speedrun.sh` path keeps its promise: run it again after a SIGKILL and it continues the same run
(finished stages skipped, base_train resumed from this run's newest checkpoint), and an out-of-memory exit is retried
at half the device batch from the emergency checkpoint. The real cpu-demo pipeline (slow), and the helper's OOM
retry and run id bookkeeping with a stand-in stage command (fast)."""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HELPER = [sys.executable, "-m", "nanochat.speedrun_helper"]


def helper_env(base, **extra):
    env = {k: v for k, v in os.environ.items() if k not in ("NANOCHAT_RUN_ID", "SPEEDRUN_FRESH")}
    env.update(NANOCHAT_BASE_DIR=str(base), PYTHONPATH=str(REPO), **extra)
    return env


def helper(base, *args, **extra):
    return subprocess.run([*HELPER, *args], capture_output=True, text=True, env=helper_env(base, **extra),
                          cwd=REPO, timeout=120)


# ---- fast: the helper on its own ------------------------------------------------------------------------------
OOM_STAGE = ("import sys; bs = int([a for a in sys.argv if a.startswith('--device_batch_size=')][-1].split('=')[1]); "
             "open(sys.argv[1], 'a').write(' '.join(sys.argv[2:]) + '\\n'); sys.exit(3 if bs > 2 else 0)")


def test_oom_retries_at_half_the_batch_and_the_next_invocation_keeps_it(tmp_path):
    base = tmp_path / "base"
    run_id = helper(base, "begin", "cpu-demo").stdout.strip()
    calls = tmp_path / "calls"
    r = helper(base, "run", "base_train", "--ckpt", "base_checkpoints/demo", "--", sys.executable, "-c", OOM_STAGE,
               str(calls), "--device_batch_size=8", "--total_batch_size=8192")
    assert r.returncode == 0, r.stderr
    tried = [re.search(r"--device_batch_size=(\d+)", line).group(1) for line in calls.read_text().splitlines()]
    assert tried == ["8", "4", "2"]
    assert all("--total_batch_size=8192" in line and "--resume_from_step=latest" in line
               for line in calls.read_text().splitlines())
    assert "out of memory at device_batch_size=8 (exit 3); retrying at device_batch_size=4" in r.stderr
    assert "total batch is unchanged" in r.stderr
    st = json.loads((base / "speedrun_state.json").read_text())
    assert st["run_id"] == run_id and st["done"] == ["base_train"] and st["device_bs"] == {"base_train": 2}
    # done: skipped by the next invocation of the same run
    again = helper(base, "run", "base_train", "--ckpt", "base_checkpoints/demo", "--", "false")
    assert again.returncode == 0 and "skipped" in again.stderr
    # an OOM at batch 1 has nowhere to go: exit 3, said in one line
    r = helper(base, "run", "mid_train", "--ckpt", "mid_checkpoints/demo", "--", sys.executable, "-c",
               "import sys; sys.exit(3)", "--device_batch_size=1")
    assert r.returncode == 3 and "nothing smaller to try" in r.stderr


def test_run_id_persists_until_finish_and_fresh_starts_over(tmp_path):
    base = tmp_path / "base"
    first = helper(base, "begin", "cpu-demo")
    second = helper(base, "begin", "cpu-demo")
    assert first.stdout.strip() == second.stdout.strip() and "continuing run" in second.stderr
    fresh = helper(base, "begin", "cpu-demo", "--fresh")
    assert fresh.stdout.strip() != first.stdout.strip() and "starting over" in fresh.stderr
    assert helper(base, "finish").returncode == 0
    after = helper(base, "begin", "cpu-demo")
    assert after.stdout.strip() != fresh.stdout.strip() and "new run" in after.stderr


@pytest.mark.parametrize("env,words", [
    (dict(DEVICE_BS="3", SFT_BS="4", SEQ_LEN="256", NPROC_PER_NODE="1"), ["--total_batch_size=8192", "DEVICE_BS=3"]),
    (dict(DEVICE_BS="8", SFT_BS="3", SEQ_LEN="256", NPROC_PER_NODE="1"), ["target_examples_per_step", "SFT_BS=3"]),
    (dict(DEVICE_BS="8", SFT_BS="4", SEQ_LEN="x", NPROC_PER_NODE="1"), ["SEQ_LEN must be a positive integer"]),
    (dict(DEVICE_BS="8", SFT_BS="4", SEQ_LEN="256", NPROC_PER_NODE="0"), ["NPROC_PER_NODE"]),
])
def test_knobs_are_refused_before_anything_is_downloaded(tmp_path, env, words):
    base = tmp_path / "base"
    script = tmp_path / "speedrun.sh"
    script.write_text((REPO / "speedrun.sh").read_text())
    r = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                       env=helper_env(base, PROFILE="cpu-demo", PYTHON=sys.executable, **env))
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and all(w in lines[0] for w in words), r.stderr
    assert not base.exists()   # nothing downloaded, nothing written


# ---- slow: the real cpu-demo pipeline -------------------------------------------------------------------------
def _wait_for(path: Path, proc, timeout: float):
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"speedrun.sh ended (exit {proc.returncode}) before {path.name}"
        assert time.monotonic() < deadline, f"no {path} after {timeout:.0f} s"
        time.sleep(0.5)


@pytest.mark.slow
@pytest.mark.timeout(5400)
def test_sigkilled_speedrun_resumes_base_train_and_finishes_with_an_oom_retry(tmp_path):
    """One run of the real cpu-demo pipeline: base_train at DEVICE_BS=8 runs out of memory at step 30 (fault
    injection) and is retried at 4 from the emergency checkpoint; after the step-50 checkpoint the whole process
    group is SIGKILLed; `bash speedrun.sh` again, unchanged, resumes base_train at step >= 50 and finishes."""
    base = tmp_path / "base"
    script = tmp_path / "speedrun.sh"   # a copy: the script cds to its folder and leaves report.md there
    script.write_text((REPO / "speedrun.sh").read_text())
    env = helper_env(base, PROFILE="cpu-demo", PYTHON=sys.executable, NANOCHAT_DEMO_MAX_MB="8",
                     NANOCHAT_FAULT_OOM_ABOVE_BS="4", NANOCHAT_FAULT_OOM_FROM_STEP="30")
    log1 = (tmp_path / "first.log").open("w")
    proc = subprocess.Popen(["bash", str(script)], stdout=log1, stderr=subprocess.STDOUT, env=env, cwd=tmp_path,
                            start_new_session=True)
    try:
        _wait_for(base / "base_checkpoints" / "demo" / "meta_000050.json", proc, 1500)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        log1.close()
    first = (tmp_path / "first.log").read_text()
    assert "out of memory at device_batch_size=8 (exit 3); retrying at device_batch_size=4 from its emergency " \
           "checkpoint step 30" in first, first[-3000:]
    run_id = json.loads((base / "speedrun_state.json").read_text())["run_id"]

    second = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env, cwd=tmp_path,
                            timeout=3000)
    out = second.stdout + second.stderr
    assert second.returncode == 0, out[-4000:]
    assert f"continuing run {run_id}" in out
    for done in ("report_reset", "data", "tok_train", "tok_eval"):
        assert f"=== {done}: done in run {run_id}, skipped ===" in out
    m = re.search(r"Resuming optimization from step (\d+) \(device batch size (\d+)", out)
    assert m and int(m.group(1)) >= 50 and m.group(2) == "4", out[-4000:]
    assert "mid_train: out of memory at device_batch_size=8" in out   # mid's own retry, same path
    assert (tmp_path / "report.md").exists()
    assert not (base / "speedrun_state.json").exists()           # finished: the next invocation is a new run
    for d in ("base_checkpoints", "mid_checkpoints", "chatsft_checkpoints"):
        metas = sorted((base / d / "demo").glob("meta_*.json"))
        assert metas and json.loads(metas[-1].read_text())["run_id"] == run_id
