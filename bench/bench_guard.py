"""Benchmark: the divergence guard's cost — the real training loop with --divergence_guard on vs off.

    python bench/bench_guard.py [--steps 12] [--warmup 2] [--rounds 2] [--base_dir DIR] [--threads N]

Runs bench_train.py's CPU configuration (d4, seq 512, device batch 8, total 8,192 tokens, demo corpus) `--rounds`
times with the guard off and on, interleaved (off, on, off, on, ...), and prints each run's median tokens/s, the
median over the rounds for each setting, and the ratio on/off (the target is >= 0.99). With the guard on the step's
one read-back (loss, token counts, gradient norm) happens before the optimizer step instead of after it; on a CPU
that costs nothing but the gradient norm (clipping already computes it for base_train), on a GPU the optimizer's
kernel launches can no longer overlap the backward: measure there with `--gpu`.
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import torch  # noqa: E402

from bench_train import RandomTokens, run_config  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--base_dir", type=Path, default=Path(tempfile.gettempdir()) / "nanochat-bench")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--gpu", action="store_true", help="d20 on CUDA (random tokens) instead of the CPU config")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    results = {"off": [], "on": []}
    if args.gpu:
        device = torch.device("cuda", 0)

        def once(flag):
            return run_config(f"cuda-d20-guard-{flag}", depth=20, B=4, T=1024, total=32768, steps=args.steps,
                              warmup=args.warmup, device=device, vocab_size=65536,
                              make_loader=lambda B, T: RandomTokens(B, T, 65536, device),
                              extra_flags=[f"--divergence_guard={int(flag == 'on')}"])
    else:
        subprocess.run([sys.executable, str(REPO / "bench" / "bench_train.py"), "--prepare_only",
                        f"--base_dir={args.base_dir}"], check=True)
        os.environ["NANOCHAT_BASE_DIR"] = str(args.base_dir)
        from nanochat.dataloader import DataLoader
        from nanochat.tokenizer import get_tokenizer
        tokenizer = get_tokenizer()
        cpu = torch.device("cpu")

        def once(flag):
            return run_config(f"cpu-d4-guard-{flag}", depth=4, B=8, T=512, total=8192, steps=args.steps,
                              warmup=args.warmup, device=cpu, vocab_size=tokenizer.get_vocab_size(),
                              make_loader=lambda B, T: DataLoader(tokenizer, B, T, "train", cpu),
                              extra_flags=["--compile=off", f"--divergence_guard={int(flag == 'on')}"])
    for _ in range(args.rounds):
        for flag in ("off", "on"):
            results[flag].append(once(flag))
    off, on = statistics.median(results["off"]), statistics.median(results["on"])
    print(f"RESULT guard: off {off:,.0f} tok/s, on {on:,.0f} tok/s (medians of {args.rounds} runs each); "
          f"ratio on/off {on / off:.4f}", flush=True)


if __name__ == "__main__":
    main()
