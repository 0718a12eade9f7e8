"""bench/gpu_check: without CUDA it stops at once with one line; its log parsing, predictions, table and time budget;
and (slow) the whole check run small on a CPU (`--smoke`), every phase ok within its budget."""
import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from nanotui.core.vram import GIB, Assumptions, ModelShape, accumulation, allocated_bytes, training_terms

REPO = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("gpu_check", REPO / "bench" / "gpu_check.py")
gc = importlib.util.module_from_spec(spec)
sys.modules["gpu_check"] = gc          # dataclasses look their module up
spec.loader.exec_module(gc)

BASE_LOG = """Vocab size: 64,209
step 00000/00004 (0.00%) | loss: 9.000000 | lrm: 1.00 | dt: 900.00ms | tok/sec: 1,000 | mfu: 1.00 | total time: 0.00m
step 00001/00004 (25.00%) | loss: 8.000000 | lrm: 1.00 | dt: 90.00ms | tok/sec: 10,000 | mfu: 30.00 | total time: 0.00m
step 00002/00004 (50.00%) | loss: 7.000000 | lrm: 1.00 | dt: 90.00ms | tok/sec: 20,000 | mfu: 40.00 | total time: 0.00m
step 00003/00004 (75.00%) | loss: 6.000000 | lrm: 1.00 | dt: 90.00ms | tok/sec: 22,000 | mfu: 44.00 | total time: 0.00m
step 00004/00004 (100.00%) | loss: 5.000000 | lrm: 1.00 | dt: 90.00ms | tok/sec: 24,000 | mfu: 48.00 | total time: 0.00m
Peak memory usage: 10240.00MiB
"""
SFT_LOG = """Vocab size: 512
Step 00000/00002 | Training loss: 3.747337| lrm: 1.000000| num_tokens: 93
Step 00001/00002 | Training loss: 4.127203| lrm: 0.750000| num_tokens: 69
Peak memory usage: 512.00MiB
"""


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_without_cuda_it_stops_at_once_with_one_line():
    t0 = time.monotonic()
    r = subprocess.run(["bash", str(REPO / "bench" / "gpu_check.sh")], capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, PYTHON=sys.executable))
    assert r.returncode == 2 and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "no CUDA GPU" in lines[0] and "Traceback" not in r.stderr
    assert time.monotonic() - t0 < 30
    r = subprocess.run(["bash", str(REPO / "bench" / "gpu_check.sh")], capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, GPU_CHECK_BUDGET_S="ten"))
    assert r.returncode == 2 and "GPU_CHECK_BUDGET_S" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_bad_depth_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("GPU_CHECK_DEPTH", "deep")
    with pytest.raises(ValueError, match="GPU_CHECK_DEPTH must be a positive integer"):
        gc.make_config(False, tmp_path)
    assert gc.make_config(True, tmp_path).depth == 1          # the smoke run has its own tiny shape


def test_log_parsing():
    got = gc.parse_stage_log(BASE_LOG)
    assert got == {"steps": 5, "peak_gib": 10.0, "tok_s": 22000, "mfu": 44.0, "vocab": 64209}
    sft = gc.parse_stage_log(SFT_LOG)
    assert sft == {"steps": 2, "peak_gib": 0.5, "tok_s": None, "mfu": None, "vocab": 512}
    assert gc.parse_stage_log("")["steps"] == 0


def test_prediction_is_the_predictor_with_the_stage_accumulation():
    alloc, reserved = gc.predicted_gib(12, 64209, 1024, 16, 16 * 1024 * 2, compiled=True)
    terms = training_terms(ModelShape(12, 64209, 1024), 16, Assumptions(), accumulation(32768, 16, 1024))
    assert alloc == pytest.approx(allocated_bytes(terms) / GIB) and reserved > alloc
    one, _ = gc.predicted_gib(12, 64209, 1024, 16, 16 * 1024, compiled=True)
    assert one < alloc                                  # one micro-step: no gradients at the peak


def test_table_and_budget():
    rows = [gc.Row("base_train", True, "16x1024 acc 2", True, 10.0, 9.5, 123456.0, 41.5, 80.0),
            gc.Row("chat_sft", False, "4x1024 acc 2", False, note="exit 1")]
    lines = gc.format_table(rows)
    assert len({len(line) for line in lines[:2]}) == 1 and "0.950" in lines[2] and "123,456" in lines[2]
    assert lines[3].split()[:2] == ["chat_sft", "off"] and "FAIL exit 1" in lines[3]
    b = gc.Budget(100.0, start=time.monotonic() - 90)
    assert 9 < b.left() <= 10 and b.limit(150) <= 10 and b.limit(5) == 5
    assert gc.Budget(1.0, start=time.monotonic() - 5).limit(60) == 0
    assert sum(gc.PHASE_LIMITS.values()) <= 600         # the phases' shares fit the ten minutes


@pytest.mark.slow
def test_smoke_runs_every_phase_on_a_cpu(tmp_path):
    """Every phase of the GPU check, tiny, on the CPU: the table has them all ok and the budget holds."""
    env = dict(os.environ, GPU_CHECK_BASE=str(tmp_path / "base"), GPU_CHECK_REPORT=str(tmp_path / "r.json"))
    r = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_check.py"), "--smoke"], capture_output=True,
                       text=True, timeout=900, env=env, cwd=REPO)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    import json
    report = json.loads((tmp_path / "r.json").read_text())
    stages = [row["stage"] for row in report["rows"]]
    assert stages == ["corpus+tok", "base_train", "base_train", "mid_train", "chat_sft", "probe(auto)",
                      "oom->fallback"]
    assert all(row["ok"] for row in report["rows"]) and report["used_s"] <= report["budget_s"]
    assert "candidates [8, 4] -> 4" in r.stdout


def test_gpu_tests_fit_a_short_window():
    """tests/gpu: no test module imports another (shared code lives in gpu_helpers/conftest), every module has its
    own time limit that leaves out the once-per-session corpus and tokenizer, and the probe is bounded."""
    gpu = REPO / "tests" / "gpu"
    for path in gpu.glob("test_*.py"):
        text = path.read_text()
        assert "from test_" not in text and "import test_" not in text, path.name
        assert "pytest.mark.timeout(" in text and "func_only=True" in text, path.name
    assert "NANOCHAT_AUTO_BS_MAX" in (gpu / "test_gpu_batch_probe.py").read_text()
    assert 'scope="session"' in (gpu / "conftest.py").read_text()
