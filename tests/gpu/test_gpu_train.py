"""GPU check (issue 2): d20 at the 4090 profile under a 24 GiB cap — memory, tok/s, MFU — then a real CUDA OOM at
DEVICE_BS=16 (exit 3, emergency checkpoint) and a resume at DEVICE_BS=4 that continues from it.

Run on the device machine: `python -m pytest -q -s -m gpu tests/gpu/test_gpu_train.py`. Numbers are printed and,
when NANOCHAT_GPU_REPORT is set, written there as JSON.
"""
import re
import statistics

import pytest
import torch

from gpu_helpers import STEP
from gpu_helpers import report as _report
from gpu_helpers import train as _train

# each test's own limit excludes the session fixture (corpus and tokenizer: built once, see conftest.py)
pytestmark = [pytest.mark.gpu, pytest.mark.timeout(420, func_only=True),
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]



def test_d20_4090_profile_memory_speed_then_real_oom_and_resume(gpu_base):
    # 1) 20 steps at device batch 4 under the cap (total batch 65,536: grad accumulation 16)
    run = _train(gpu_base, "--device_batch_size=4", "--total_batch_size=65536", "--num_iterations=20",
                 "--save_every=10", "--model_tag=gpu4")
    assert run.returncode == 0, run.stderr[-3000:]
    steps = [(int(s), int(t.replace(",", "")), m) for s, t, m in STEP.findall(run.stdout)]
    assert len(steps) == 20
    timed = steps[5:]
    tok_s = statistics.median(t for _, t, _ in timed)
    mfus = [float(m) for _, _, m in timed if m != "n/a"]
    peak_mib = float(re.search(r"^Peak memory usage: ([\d.]+)MiB$", run.stdout, re.M).group(1))
    _report("device", torch.cuda.get_device_name(0))
    _report("d20_B4_T1024_peak_allocated_GiB", round(peak_mib / 1024, 2))
    _report("d20_B4_T1024_tok_per_sec_median", tok_s)
    _report("d20_B4_T1024_mfu_median", statistics.median(mfus) if mfus else None)
    assert peak_mib <= 20 * 1024, f"peak {peak_mib:.0f} MiB exceeds the 20 GiB target"
    assert "Checkpoint saved: step 000020" in run.stdout

    # 2) device batch 16 under the same cap: a real CUDA OOM -> emergency checkpoint -> exit 3
    oom = _train(gpu_base, "--device_batch_size=16", "--total_batch_size=65536", "--num_iterations=6",
                 "--save_every=100", "--model_tag=gpuoom", compile_model=False)
    _report("oom_run_exit_code", oom.returncode)
    assert oom.returncode == 3, oom.stdout[-2000:] + oom.stderr[-2000:]
    m = re.search(r"^OOM: CUDA out of memory at device_batch_size=16, step (\d+); emergency checkpoint: step (\d{6})$",
                  oom.stdout, re.M)
    assert m, oom.stdout[-2000:]
    emergency = int(m.group(2))
    _report("oom_line", m.group(0))

    # 3) resume at device batch 4 from the emergency checkpoint
    resumed = _train(gpu_base, "--device_batch_size=4", "--total_batch_size=65536", "--num_iterations=6",
                     "--save_every=100", "--model_tag=gpuoom", "--resume_from_step=latest", compile_model=False)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Resuming optimization from step {emergency} (device batch size 4" in resumed.stdout
    first = int(STEP.search(resumed.stdout).group(1))
    assert first == emergency
    _report("resumed_from_step", emergency)
