"""Benchmark: the divergence guard's cost — the real training loop, guard on and off interleaved step by step.

    python bench/bench_guard.py [--steps 41] [--warmup 1] [--seed 0] [--base_dir DIR] [--threads N] [--gpu]

One Trainer (bench_train.py's CPU configuration: d4, seq 512, device batch 8, total 8,192 tokens, demo corpus; or
with `--gpu` d20 at the 4090 profile on random tokens) whose `guard.enabled` is set before every step from a seeded,
balanced shuffle (`--seed`), so guard-on and guard-off steps interleave and share whatever else the machine is doing
(separate runs on a shared machine differ by more than the effect) without lining up with anything periodic (the
loader tokenizes a new row group every few steps). Prints the median step time of each setting and the ratio of
throughputs on/off (target >= 0.99). With the guard on, the step's one read-back (loss, token counts, gradient
norm) happens before the optimizer step instead of after it.
"""
import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import torch  # noqa: E402

from bench_train import RandomTokens  # noqa: E402
from nanochat.gpt import GPT, config_for_depth  # noqa: E402
from nanochat.optim import get_lr_multiplier, get_muon_momentum  # noqa: E402
from nanochat.trainer import FlagParser, Trainer, add_training_flags  # noqa: E402


def measure(depth, B, T, total, steps, warmup, device, vocab_size, make_loader, flags=(), seed=0):
    args = add_training_flags(FlagParser()).parse_args([
        f"--device_batch_size={B}", f"--max_seq_len={T}", f"--total_batch_size={total}", f"--num_iterations={steps}",
        "--save_every=-1", "--eval_every=-1", "--model_tag=bench_guard", *flags])
    config = config_for_depth(depth, vocab_size=vocab_size, sequence_len=T)
    with torch.device("meta"):
        model = GPT(config)
    model.to_empty(device=device)
    model.init_weights()
    dts = {True: [], False: []}
    n = steps - warmup
    order = [True] * warmup + random.Random(seed).sample([True, False] * (n // 2) + [True] * (n % 2), n)

    def on_step(trainer, step, metrics):
        if step >= warmup:
            dts[trainer.guard.enabled].append(metrics["train/dt"])
        if step + 1 < steps:
            trainer.guard.enabled = order[step + 1]  # the setting of the next step

    trainer = Trainer(args=args, stage="base", model_tag="bench_guard", model=model,
                      optimizers=model.setup_optimizers(), device=device,
                      make_train_loader=lambda state: make_loader(B, T), num_iterations=steps,
                      lr_multiplier=lambda s: get_lr_multiplier(s, steps), muon_momentum=get_muon_momentum,
                      meta={"model_config": asdict(config)}, save_checkpoints=False, on_step=on_step)
    if trainer.run() != 0:
        raise SystemExit("the trainer did not finish")
    on, off = statistics.median(dts[True]), statistics.median(dts[False])
    print(f"RESULT guard ({device.type}, d{depth}, B={B}, T={T}, total {total:,}, accum {trainer.grad_accum_steps}): "
          f"median step {off * 1000:.1f} ms off / {on * 1000:.1f} ms on over {len(dts[False])} / {len(dts[True])} "
          f"interleaved steps (seed {seed}); throughput ratio on/off {off / on:.4f}", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=41)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--base_dir", type=Path, default=Path(tempfile.gettempdir()) / "nanochat-bench")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--gpu", action="store_true", help="d20 on CUDA (random tokens) instead of the CPU config")
    p.add_argument("--seed", type=int, default=0, help="the shuffle of guard-on/off steps")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, CPU threads {torch.get_num_threads()}", flush=True)
    if args.gpu:
        device = torch.device("cuda", 0)
        measure(20, 4, 1024, 32768, args.steps, args.warmup, device, 65536,
                lambda B, T: RandomTokens(B, T, 65536, device), seed=args.seed)
        return
    subprocess.run([sys.executable, str(REPO / "bench" / "bench_train.py"), "--prepare_only",
                    f"--base_dir={args.base_dir}"], check=True)
    os.environ["NANOCHAT_BASE_DIR"] = str(args.base_dir)
    from nanochat.dataloader import DataLoader
    from nanochat.tokenizer import get_tokenizer
    tokenizer = get_tokenizer()
    cpu = torch.device("cpu")
    measure(4, 8, 512, 8192, args.steps, args.warmup, cpu, tokenizer.get_vocab_size(),
            lambda B, T: DataLoader(tokenizer, B, T, "train", cpu), flags=["--compile=off"], seed=args.seed)


if __name__ == "__main__":
    main()
