"""GPU check (issue 12): `--device_batch_size=auto` for d20 at T=1024 under a 24 GiB cap (a 4090's card), then the
probe's measured peaks beside the predictor's rows (printed and, with NANOCHAT_GPU_REPORT, saved) and training at the
chosen size without an OOM. Run on the device machine: `python -m pytest -q -s -m gpu tests/gpu/test_gpu_batch_probe.py`.
"""
import re

import pytest
import torch

from gpu_helpers import report, train
from nanotui.core.vram import ModelShape, gpu_spec, plan_stage

pytestmark = [pytest.mark.gpu, pytest.mark.timeout(300, func_only=True),
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

PROBE = re.compile(r"^Device batch probe: device_batch_size=(\d+) peak=(\S+) reserved=(\S+) limit=\S+ -> (.+)$", re.M)


def _gib(text):
    return None if text == "n/a" else float(text[:-3]) / (1024 if text.endswith("MiB") else 1)


def test_auto_batch_on_a_24_gib_cap_against_the_prediction(gpu_base):
    predicted = plan_stage("base_train", ModelShape(20, 65536, 1024), 65536, gpu_spec("24"))
    # every candidate costs a torch.compile: start at twice the predicted choice, as the supervisor does
    bound = 2 * (predicted.chosen or 1)
    run = train(gpu_base, "--device_batch_size=auto", "--total_batch_size=65536", "--num_iterations=5",
                "--save_every=-1", "--model_tag=auto", env_extra={"NANOCHAT_AUTO_BS_MAX": str(bound)})
    assert run.returncode == 0, run.stderr[-3000:]
    rows = [(int(b), _gib(p), _gib(r), o) for b, p, r, o in PROBE.findall(run.stdout)]
    chosen = int(re.search(r"^Device batch size auto: (\d+)", run.stdout, re.M).group(1))
    assert rows and rows[-1][0] == chosen and rows[-1][3] == "fits"
    assert "OOM:" not in run.stdout and len(re.findall(r"^step \d{5}/", run.stdout, re.M)) == 5
    assert rows[0][0] <= bound and len(rows) <= 3           # bounded: a compile per candidate, from 2x the prediction
    table = [{"device_bs": b, "measured_peak_gib": p, "measured_reserved_gib": r, "outcome": o,
              "predicted_gib": (predicted.row(b).train_gib if predicted.row(b) else None),
              "predicted_allocated_gib": (predicted.row(b).allocated_gib if predicted.row(b) else None)}
             for b, p, r, o in rows]
    report("auto_probe_d20_T1024_cap24", {"chosen": chosen, "predicted_chosen": predicted.chosen, "rows": table})
