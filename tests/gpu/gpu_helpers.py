"""Helpers of the GPU tests (not a test module): the 4090-profile flags, running base_train, reporting numbers."""
import json
import os
import re
import subprocess
import sys

CAP_GIB = 24
# a trainer step line: step, tok/sec, mfu (the unit suite checks it against real trainer output)
STEP = re.compile(r"^step (\d{5})/\d{5} .*\| tok/sec: ([\d,]+) \| mfu: (n/a|[\d.]+) \|", re.M)
PROFILE_4090 = ["--depth=20", "--max_seq_len=1024", "--eval_every=-1", "--core_metric_every=-1",
                "--sample_every=-1", "--run=dummy"]
# built once, outside any test's time limit: by bench/gpu_check.sh (GPU_CHECK_BASE) or the session fixture
BUILD_STEPS = (["-m", "nanochat.dataset", "--demo", "--max_mb=8"],
               ["-m", "nanochat.scripts.tok_train", "--vocab_size=65536", "--max_chars=8000000"])


def build_base(base, timeout=300):
    """Demo corpus + a 65,536-token tokenizer in `base` (skipped when both are there already)."""
    if (base / "tokenizer").is_dir() and (base / "base_data").is_dir():
        return base
    env = dict(os.environ, NANOCHAT_BASE_DIR=str(base))
    for cmd in BUILD_STEPS:
        proc = subprocess.run([sys.executable, *cmd], env=env, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr[-2000:]}")
    return base


def train(base, *flags, compile_model=True, timeout=240, env_extra=None):
    """base_train at the 4090 profile under the 24 GiB cap, as a subprocess with its own time limit."""
    env = dict(os.environ, NANOCHAT_BASE_DIR=str(base), NANOCHAT_CUDA_MEMORY_CAP_GIB=str(CAP_GIB),
               NANOCHAT_COMPILE="1" if compile_model else "0", **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "nanochat.scripts.base_train", *PROFILE_4090, *flags], env=env,
                          capture_output=True, text=True, timeout=timeout)


def report(key, value):
    print(f"GPU CHECK {key}: {value}")
    path = os.environ.get("NANOCHAT_GPU_REPORT")
    if path:
        data = json.load(open(path)) if os.path.exists(path) else {}
        data[key] = value
        with open(path, "w") as f:
            json.dump(data, f, indent=1)
