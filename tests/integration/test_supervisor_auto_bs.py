"""DEVICE_BS=auto end to end (cpu-demo: data, tok_train, base_train, mid_train) with an injected memory limit:
the probe starts base_train at the largest batch that fits, with no OOM; the table lands in events, state.json and
`nanotui status`; the total batch is unchanged; mid_train (same model, same seq len) reuses the choice."""
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
NEEDED = ("nanochat.dataset", "nanochat.scripts.tok_train", "nanochat.scripts.base_train",
          "nanochat.scripts.mid_train")

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(any(importlib.util.find_spec(m) is None for m in NEEDED),
                                 reason="the real cpu-demo stages are not all there yet")]


def test_cpu_demo_auto_batch_starts_at_the_largest_fit(base_dir):
    env = dict(os.environ, PYTHONPATH=str(REPO), DEVICE_BS="auto", NANOCHAT_FAULT_OOM_ABOVE_BS="2",
               NANOTUI_PLAIN="1")
    r = subprocess.run([sys.executable, "-m", "nanotui.cli", "start", "--profile", "cpu-demo", "--grace", "0",
                        "--stages", "data,tok_train,base_train,mid_train",
                        "--set", "base_train:--num_iterations=6", "--set", "base_train:--save_every=3",
                        "--set", "base_train:--eval_every=-1", "--set", "base_train:--sample_every=-1",
                        "--set", "mid_train:--num_iterations=2", "--set", "mid_train:--eval_every=-1"],
                       env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    rd = RunDir.open(base_dir, r.stdout.split()[2])
    plan = rd.read_plan()
    assert [s["device_bs"] for s in plan["stages"] if s["trains"]] == [None, None]
    deadline = time.monotonic() + 1200
    while rd.read_state()["phase"] not in ("done", "failed", "stopped") or rd.supervisor_alive():
        assert time.monotonic() < deadline, "cpu-demo subset did not finish in 20 minutes"
        time.sleep(1)
    st = rd.read_state()
    assert st["phase"] == "done", (st["reason"], rd.supervisor_log.read_text()[-2000:])
    evs = rd.read_events()
    assert not [e for e in evs if e["type"] in ("oom", "fallback")]           # no OOM: the probe found the fit
    probes = [e for e in evs if e["type"] == "device_bs_probe"]
    assert len(probes) == 1 and probes[0]["stage"] == "base_train"
    # cpu-demo base: 8192 tokens / 256 = 32 sequences -> candidates 32, 16, 8, 4, 2; the injector OOMs above 2
    assert [(row["device_bs"], row["outcome"]) for row in probes[0]["rows"]] == \
        [(32, "OOM"), (16, "OOM"), (8, "OOM"), (4, "OOM"), (2, "fits")]
    assert probes[0]["device_bs"] == 2 and probes[0]["headroom"] == pytest.approx(0.1)
    assert st["probes"][0]["device_bs"] == 2
    base_rec = next(s for s in st["stages"] if s["name"] == "base_train")
    assert base_rec["device_bs"] == 2 and base_rec["attempts"] == 1
    logs = {p.name.split("-")[1]: p.read_text() for p in rd.list_logs()}
    base_log = next(v for k, v in logs.items() if k == "base_train")
    assert "Device batch size auto: 2 (headroom 10%" in base_log
    assert re.search(r"Total batch size 8,192 => gradient accumulation steps: 16", base_log)  # total unchanged
    # mid_train: same model and seq len -> the supervisor passes the probed batch, no probe of its own
    reused = [e for e in evs if e["type"] == "device_bs_reused"]
    assert [(e["stage"], e["device_bs"], e["from_stage"]) for e in reused] == [("mid_train", 2, "base_train")]
    mid_start = [e for e in evs if e["type"] == "stage_started" and e["stage"] == "mid_train"][-1]
    assert "--device_batch_size=2" in mid_start["argv"] and mid_start["device_bs"] == 2
    mid_log = next(v for k, v in logs.items() if k == "mid_train")
    assert "Device batch probe" not in mid_log and "Tokens / micro-batch / rank: 2 x 256" in mid_log
    # nanotui status shows the table
    out = subprocess.run([sys.executable, "-m", "nanotui.cli", "status", rd.run_id], env=env, cwd=REPO,
                         capture_output=True, text=True, timeout=60).stdout
    assert "probe base_train: device_batch_size auto -> 2" in out and "B=32 OOM" in out and "B=2 fits" in out
    js = json.loads(subprocess.run([sys.executable, "-m", "nanotui.cli", "status", "--json", rd.run_id], env=env,
                                   cwd=REPO, capture_output=True, text=True, timeout=60).stdout)
    assert js["probes"][0]["device_bs"] == 2
