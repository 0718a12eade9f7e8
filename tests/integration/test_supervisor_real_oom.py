"""OOM fallback end to end with the REAL tiny trainer (cpu-demo: data, tok_train, base_train), nobody attached."""
import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nanotui.runtime.rundir import RunDir

REPO = Path(__file__).resolve().parents[2]
NEEDED = ("nanochat.dataset", "nanochat.scripts.tok_train", "nanochat.scripts.base_train")

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(any(importlib.util.find_spec(m) is None for m in NEEDED),
                                 reason="the real cpu-demo stages are not all there yet")]


def steps_of(log: Path):
    return [int(m.group(1)) for m in re.finditer(r"^step (\d+)", log.read_text(), re.M)]


def test_cpu_demo_oom_falls_back_to_b2_without_losing_steps(base_dir):
    env = dict(os.environ, PYTHONPATH=str(REPO), DEVICE_BS="8", NANOCHAT_FAULT_OOM_ABOVE_BS="2",
               NANOTUI_PLAIN="1")
    r = subprocess.run([sys.executable, "-m", "nanotui.cli", "start", "--profile", "cpu-demo", "--grace", "0",
                        "--stages", "data,tok_train,base_train",
                        "--set", "base_train:--num_iterations=30", "--set", "base_train:--save_every=10",
                        "--set", "base_train:--eval_every=-1", "--set", "base_train:--sample_every=-1"],
                       env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    rd = RunDir.open(base_dir, r.stdout.split()[2])
    deadline = time.monotonic() + 900
    while rd.read_state()["phase"] not in ("done", "failed", "stopped") or rd.supervisor_alive():
        assert time.monotonic() < deadline, "cpu-demo subset did not finish in 15 minutes"
        time.sleep(1)
    st = rd.read_state()
    assert st["phase"] == "done", (st["reason"], rd.supervisor_log.read_text()[-2000:])
    evs = rd.read_events()
    falls = [(e["from_bs"], e["to_bs"]) for e in evs if e["type"] == "fallback"]
    assert falls == [(8, 4), (4, 2)]
    assert [e["device_bs"] for e in evs if e["type"] == "oom"] == [8, 4]
    assert st["stages"][-1]["device_bs"] == 2
    logs = [p for p in rd.list_logs() if "base_train" in p.name]
    final = logs[-1].read_text()
    assert "--device_batch_size=2" in json.dumps([e["argv"] for e in evs if e["type"] == "stage_started"][-1])
    assert re.search(r"Total batch size 8,192", final)  # total batch unchanged; grad accum grew
    # no step lost (upstream numbering: `step S` is the 0-based step just taken; a checkpoint at S = S steps
    # done, so a resume from S prints S next): steps 0..29 all appear, and each attempt after an OOM starts
    # exactly at the emergency checkpoint
    per_attempt = [steps_of(p) for p in logs]
    assert sorted(set(s for st_ in per_attempt for s in st_)) == list(range(0, 30))
    ooms = [e for e in evs if e["type"] == "oom"]
    for oom, nxt in zip(ooms, per_attempt[1:]):
        if oom.get("emergency_step") is not None and nxt:
            assert nxt[0] == oom["emergency_step"]
    kinds = [e["type"] for e in evs]
    assert kinds.count("stage_done") == 3 and kinds[-1] == "done"
