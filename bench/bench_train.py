"""Benchmark: the real training loop (Trainer + DataLoader + Muon/AdamW) on a fixed small config; tok/s, memory, MFU.

    python bench/bench_train.py [--steps 10] [--warmup 2] [--base_dir DIR] [--vocab_size 4096] [--gpu auto|on|off]
        [--compile auto|on|off] [--gpu_full_context]

CPU part: d4, seq 512, device batch 8, total batch 8,192 tokens (grad accumulation 2) on the offline demo corpus,
`--steps` optimizer steps; prints the median tokens/s over the steps after `--warmup`. On CUDA it also runs d20 at
the 4090 profile (device batch 4, seq 1024, vocab 65,536, random tokens) under
torch.cuda.set_per_process_memory_fraction(24 GiB / card) and prints peak allocated memory, tokens/s and MFU;
`--gpu_full_context` adds d20 at seq 2048, device batch 2, with --activation_checkpointing, under the same cap.
`--compile` is passed to the trainer (auto: compiled on CUDA, eager for the short CPU part).
The last line is the peak RSS of this process (data and tokenizer are prepared, once, in a child process). Nothing is checkpointed (Trainer(save_checkpoints=False)).
"""
import argparse
import itertools
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from nanochat.gpt import GPT, config_for_depth  # noqa: E402
from nanochat.optim import get_lr_multiplier, get_muon_momentum  # noqa: E402
from nanochat.trainer import FlagParser, Trainer, add_training_flags  # noqa: E402

CAP_GIB = 24


def prepare_base_dir(base_dir: Path, vocab_size: int, max_mb: float):
    """Demo corpus + tokenizer in base_dir (built once, reused)."""
    from nanochat.dataset import build_demo_corpus, iter_documents, list_train_shards
    from nanochat.tokenizer import Tokenizer

    os.environ["NANOCHAT_BASE_DIR"] = str(base_dir)
    data_dir = base_dir / "base_data"
    t0 = time.time()
    build_demo_corpus(str(data_dir), max_mb=max_mb)
    tok_dir = base_dir / "tokenizer"
    marker = tok_dir / f"bench_vocab_{vocab_size}"
    if not marker.exists():
        docs = itertools.islice(iter_documents(list_train_shards(str(data_dir))), 20000)
        tok = Tokenizer.train_from_iterator(docs, vocab_size)
        tok.save(str(tok_dir))
        tok.save_token_bytes(str(tok_dir))
        marker.write_text("")
    print(f"data + tokenizer ready in {time.time() - t0:.1f}s ({base_dir})", flush=True)


class RandomTokens:
    """A loader of uniformly random tokens (throughput and memory do not depend on the text)."""

    def __init__(self, B, T, vocab, device, seed=0):
        self.B, self.T, self.vocab, self.device = B, T, vocab, device
        self.gen = torch.Generator().manual_seed(seed)

    def next_batch(self):
        tokens = torch.randint(0, self.vocab, (self.B, self.T + 1), generator=self.gen)
        return tokens[:, :-1].to(self.device), tokens[:, 1:].to(self.device)

    def state_dict(self):
        return {}


def run_config(label, depth, B, T, total, steps, warmup, device, vocab_size, make_loader, extra_flags=()):
    args = add_training_flags(FlagParser()).parse_args([
        f"--device_batch_size={B}", f"--max_seq_len={T}", f"--total_batch_size={total}",
        f"--num_iterations={steps}", "--save_every=-1", "--eval_every=-1", f"--model_tag=bench_{label}",
        *extra_flags])
    config = config_for_depth(depth, vocab_size=vocab_size, sequence_len=T)
    with torch.device("meta"):
        model = GPT(config)
    model.to_empty(device=device)
    model.init_weights()
    optimizers = model.setup_optimizers()
    records = []
    trainer = Trainer(args=args, stage="base", model_tag=f"bench_{label}", model=model, optimizers=optimizers,
                      device=device, make_train_loader=lambda state: make_loader(B, T),
                      num_iterations=steps, lr_multiplier=lambda s: get_lr_multiplier(s, steps),
                      muon_momentum=get_muon_momentum, flops_per_token=model.estimate_flops(),
                      meta={"model_config": asdict(config)}, save_checkpoints=False,
                      on_step=lambda tr, step, m: records.append(m))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rc = trainer.run()
    if rc != 0:
        raise SystemExit(f"{label}: trainer exited with {rc}")
    timed = records[warmup:] or records
    tok_s = statistics.median(m["train/tok_per_sec"] for m in timed)
    dt_ms = statistics.median(m["train/dt"] for m in timed) * 1000
    mfus = [m["mfu"] for m in timed if m["mfu"] is not None]
    print(f"RESULT {label}: params {model.num_params():,} | B={B} T={T} total={total:,} "
          f"(accum {trainer.grad_accum_steps}, compile {'on' if trainer.compile else 'off'}) | "
          f"median over {len(timed)} steps: {tok_s:,.0f} tok/s, "
          f"dt {dt_ms:.1f} ms" + (f", MFU {statistics.median(mfus):.2f}%" if mfus else ", MFU n/a"), flush=True)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**30
        print(f"RESULT {label}: peak allocated {peak:.2f} GiB (cap {CAP_GIB} GiB)", flush=True)
    del trainer, model, optimizers
    return tok_s


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--base_dir", type=Path, default=Path(tempfile.gettempdir()) / "nanochat-bench")
    p.add_argument("--vocab_size", type=int, default=4096, help="tokenizer for the CPU config (cpu-demo profile)")
    p.add_argument("--demo_mb", type=float, default=16.0)
    p.add_argument("--gpu", choices=["auto", "on", "off"], default="auto")
    p.add_argument("--gpu_steps", type=int, default=20)
    p.add_argument("--gpu_total_batch", type=int, default=32768, help="tokens per step for d20 (4 x 1024 x 8)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    p.add_argument("--compile", choices=["auto", "on", "off"], default="auto", help="the trainer's --compile")
    p.add_argument("--gpu_full_context", action="store_true",
                   help="also d20 at seq 2048, device batch 2, activation checkpointing (24 GiB cap)")
    p.add_argument("--prepare_only", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.prepare_only:
        prepare_base_dir(args.base_dir, args.vocab_size, args.demo_mb)
        return
    print(f"torch {torch.__version__}, CPU threads {torch.get_num_threads()}", flush=True)
    # build data and tokenizer in a child process so that the peak RSS below is the training loop's alone
    subprocess.run([sys.executable, __file__, "--prepare_only", f"--base_dir={args.base_dir}",
                    f"--vocab_size={args.vocab_size}", f"--demo_mb={args.demo_mb}"], check=True)
    os.environ["NANOCHAT_BASE_DIR"] = str(args.base_dir)

    from nanochat.dataloader import DataLoader
    from nanochat.tokenizer import get_tokenizer
    tokenizer = get_tokenizer()
    cpu = torch.device("cpu")
    run_config("cpu-d4", depth=4, B=8, T=512, total=8192, steps=args.steps, warmup=args.warmup, device=cpu,
               vocab_size=tokenizer.get_vocab_size(),
               make_loader=lambda B, T: DataLoader(tokenizer, B, T, "train", cpu),
               extra_flags=[f"--compile={args.compile}"])

    use_gpu = args.gpu == "on" or (args.gpu == "auto" and torch.cuda.is_available())
    if use_gpu:
        device = torch.device("cuda", 0)
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, CAP_GIB * 2**30 / total), device)
        print(f"GPU: {torch.cuda.get_device_name(device)}, capped at {CAP_GIB} GiB of {total / 2**30:.1f} GiB",
              flush=True)
        run_config("cuda-d20", depth=20, B=4, T=1024, total=args.gpu_total_batch, steps=args.gpu_steps,
                   warmup=min(5, args.gpu_steps // 2), device=device, vocab_size=65536,
                   make_loader=lambda B, T: RandomTokens(B, T, 65536, device),
                   extra_flags=[f"--compile={args.compile}"])
        if args.gpu_full_context:
            torch.cuda.empty_cache()
            run_config("cuda-d20-T2048-ac", depth=20, B=2, T=2048, total=args.gpu_total_batch, steps=args.gpu_steps,
                       warmup=min(5, args.gpu_steps // 2), device=device, vocab_size=65536,
                       make_loader=lambda B, T: RandomTokens(B, T, 65536, device),
                       extra_flags=[f"--compile={args.compile}", "--activation_checkpointing"])
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS: {rss_mib:.1f} MiB", flush=True)


if __name__ == "__main__":
    main()
