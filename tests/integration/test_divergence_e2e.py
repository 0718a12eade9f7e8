"""The divergence guard end to end on the real cpu-demo base_train under `nanotui start` (slow): 80 steps, a
checkpoint every 20, a fault in the data of step 50 (NaN, then a spike). Left alone, the run ends `done` after one
rollback to checkpoint 40 that skipped the data of steps 40..60, with finite weights, and its losses after the
rollback (and its final weights, bitwise) equal a run given the same skip list from the start. A SIGTERM to the
rolled-back attempt stops it with a checkpoint and `nanotui resume` still ends bitwise equal."""
import importlib.util
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from nanotui.runtime.rundir import RunDir

REPO = Path(__file__).resolve().parents[2]
NEEDED = ("nanochat.dataset", "nanochat.scripts.tok_train", "nanochat.scripts.base_train")
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(any(importlib.util.find_spec(m) is None for m in NEEDED),
                                 reason="the real cpu-demo stages are not all there")]
SETS = ["--set", "base_train:--num_iterations=80", "--set", "base_train:--save_every=20",
        "--set", "base_train:--eval_every=-1", "--set", "base_train:--sample_every=-1"]
SKIP = "40:21"   # rollback to 40 (newest checkpoint before 50); data of steps 40 .. 50 + margin 10
STEP_RE = re.compile(r"^step (\d+)/\d+ .*? \| loss: ([\d.]+) ", re.M)


def env_for(base, **extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NANOCHAT_FAULT_", "NANOCHAT_RUN_ID"))}
    return dict(env, PYTHONPATH=str(REPO), NANOCHAT_BASE_DIR=str(base), NANOTUI_PLAIN="1", **extra)


def cli(base, *args, timeout=120, **extra):
    return subprocess.run([sys.executable, "-m", "nanotui.cli", *args], env=env_for(base, **extra), cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def wait_end(rd, timeout=3600):
    deadline = time.monotonic() + timeout
    while rd.read_state()["phase"] not in ("done", "failed", "stopped") or rd.supervisor_alive():
        assert time.monotonic() < deadline, f"run did not end: {rd.read_state()}"
        time.sleep(1)
    return rd.read_state()


def start(base, tag, grace="1", **fault):
    r = cli(base, "start", "--profile", "cpu-demo", "--grace", grace, "--stages", "base_train", *SETS,
            "--set", f"base_train:--model_tag={tag}", **fault)
    assert r.returncode == 0, r.stderr
    return RunDir.open(base, r.stdout.split()[2])


def losses(text, first=0):
    return {int(s): v for s, v in STEP_RE.findall(text) if int(s) >= first}


def weights(base, tag, step=80):
    return torch.load(base / "base_checkpoints" / tag / f"model_{step:06d}.pt", map_location="cpu",
                      weights_only=True)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """A base dir with the demo corpus and tokenizer, and the reference run: the same base_train given
    --data_skip=40:21 from the start (no fault)."""
    base = tmp_path_factory.mktemp("divergence") / "base"
    base.mkdir()
    r = cli(base, "start", "--profile", "cpu-demo", "--grace", "0", "--stages", "data,tok_train")
    assert r.returncode == 0, r.stderr
    assert wait_end(RunDir.open(base, r.stdout.split()[2]), 1200)["phase"] == "done"
    argv = [sys.executable, "-m", "nanochat.scripts.base_train", "--depth=2", "--max_seq_len=256",
            "--device_batch_size=8", "--total_batch_size=8192", "--num_iterations=80", "--eval_every=-1",
            "--core_metric_every=-1", "--sample_every=-1", "--save_every=20", "--model_tag=ref", "--run=dummy",
            f"--data_skip={SKIP}"]
    ref = subprocess.run(argv, env=env_for(base), cwd=REPO, capture_output=True, text=True, timeout=3600)
    assert ref.returncode == 0, ref.stdout[-2000:] + ref.stderr[-2000:]
    assert "Data skip: step 40 discards the data of 21 steps (84 micro-batches)" in ref.stdout
    return base, ref.stdout


def check_rolled_back(base, rd, tag, ref_log, cause):
    st = wait_end(rd)
    assert st["phase"] == "done", (st["reason"], rd.supervisor_log.read_text()[-2000:])
    evs = rd.read_events()
    div = [e for e in evs if e["type"] == "divergence"]
    rb = [e for e in evs if e["type"] == "rollback"]
    assert [(e["step"], e["cause"], e["ckpt_step"]) for e in div] == [(50, cause, 40)]
    assert [(e["from_step"], e["skips"]) for e in rb] == [(40, SKIP)]
    assert [(r["from_step"], r["skips"]) for r in st["rollbacks"]] == [(40, SKIP)]
    logs = [p.read_text() for p in rd.list_logs()]
    assert "Divergence: " in logs[0] and "update not applied; last checkpoint: step 000040" in logs[0]
    assert "Checkpoint saved: step 000060" not in logs[0]  # the diverged attempt saved nothing after 40
    final = weights(base, tag)
    assert all(torch.isfinite(v).all() for v in final.values())
    after = {}
    for text in logs[1:]:
        after.update(losses(text, 40))
    ref = losses(ref_log, 40)
    assert sorted(after) == list(range(40, 80)) and after == ref
    want = weights(base, "ref")
    assert all(torch.equal(final[k], want[k]) for k in want)
    out = cli(base, "status", rd.run_id).stdout
    assert f"rollback 1 base_train: {'non-finite loss' if cause == 'nonfinite' else 'loss spike'} at step 50 -> " \
           f"checkpoint step 40, data skipped {SKIP}" in out


def test_nan_at_step_50_rolls_back_unattended_and_matches_the_skipping_run(demo):
    base, ref_log = demo
    rd = start(base, "nan", NANOCHAT_FAULT_NAN_AT_STEP="50")
    check_rolled_back(base, rd, "nan", ref_log, "nonfinite")


def test_spike_at_step_50_rolls_back_unattended_and_matches_the_skipping_run(demo):
    base, ref_log = demo
    rd = start(base, "spike", NANOCHAT_FAULT_SPIKE_AT_STEP="50")
    check_rolled_back(base, rd, "spike", ref_log, "spike")


def test_sigterm_during_the_rolled_back_attempt_is_a_resumable_stop(demo):
    base, ref_log = demo
    rd = start(base, "term", grace="0", NANOCHAT_FAULT_NAN_AT_STEP="50")
    deadline = time.monotonic() + 3600
    while not any("Data skip" in p.read_text() and STEP_RE.search(p.read_text().split("Data skip", 1)[1])
                  for p in rd.list_logs()[1:]):
        assert time.monotonic() < deadline and rd.supervisor_alive(), rd.read_state()
        time.sleep(0.5)
    assert cli(base, "stop", rd.run_id).returncode == 0
    st = wait_end(rd)
    assert st["phase"] == "stopped" and st["data_skips"] == {"base_train": {"40": 21}}
    assert "Stopped on request (SIGTERM)" in rd.list_logs()[-1].read_text()
    assert cli(base, "resume", rd.run_id, NANOCHAT_FAULT_NAN_AT_STEP="50").returncode == 0
    check_rolled_back(base, rd, "term", ref_log, "nonfinite")
