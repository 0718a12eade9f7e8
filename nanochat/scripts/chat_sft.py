"""Supervised fine-tuning: padded conversation batches with assistant-only loss masks, starting from the midtrained
(or base) model, on the shared resumable trainer (checkpoints, resume, OOM, signals, SFT log lines)."""
import math
import os
import time
from dataclasses import asdict

import torch

from nanochat.batch_probe import resolve_device_batch_size
from nanochat.checkpoint import STAGE_DIRS, check_run_id, find_largest_model, load_model, run_id_from
from nanochat.common import compute_cleanup, compute_init, get_base_dir, print0, run_main
from nanochat.optim import get_muon_momentum
from nanochat.report import get_report
from nanochat.scripts.mid_train import scale_initial_lr
from nanochat.tasks.batching import SFTLoader, check_sft_batch
from nanochat.tasks.mixtures import sft_mixture
from nanochat.trainer import (EXIT_OK, FlagParser, StepHook, Trainer, add_training_flags, exit_3_on_startup_oom,
                              float_flag, positive_int)


def build_parser():
    p = FlagParser(prog="python -m nanochat.scripts.chat_sft", description=__doc__)
    # upstream's SFT clips no gradient and keeps Muon's momentum at 0.95: --grad_clip / --muon_momentum_warmup opt in
    add_training_flags(p, device_batch_size=4, max_seq_len=2048, total_batch_size=1, num_iterations=-1,
                       eval_every=None, eval_tokens=1, save_every=500, grad_clip=0.0)
    p.add_argument("--demo", action="store_true", help="offline synthetic mixture (no download)")
    p.add_argument("--source", choices=["mid", "base"], default="mid", help="checkpoint stage to start from")
    p.add_argument("--source_run_id", type=check_run_id, default=None,
                   help="load the source checkpoint of this run (default: this run's own id, when it has one)")
    p.add_argument("--source_step", type=positive_int, default=None)
    p.add_argument("--target_examples_per_step", type=positive_int, default=32,
                   help="conversations per optimizer step (all ranks together)")
    p.add_argument("--num_epochs", type=positive_int, default=1)
    p.add_argument("--eval_steps", type=positive_int, default=None, help="validation micro-batches per evaluation")
    p.add_argument("--unembedding_lr", type=float_flag, default=0.004)
    p.add_argument("--embedding_lr", type=float_flag, default=0.2)
    p.add_argument("--matrix_lr", type=float_flag, default=0.02)
    p.add_argument("--weight_decay", type=float_flag, default=0.0)
    p.add_argument("--init_lr_frac", type=float_flag, default=0.02)
    p.add_argument("--muon_momentum_warmup", action="store_true",
                   help="warm Muon's momentum up 0.85 -> 0.95 over 300 steps (upstream: constant 0.95)")
    p.add_argument("--identity_file", default=None,
                   help="identity conversations JSONL (default: $NANOCHAT_IDENTITY_FILE or "
                        "$NANOCHAT_BASE_DIR/identity_conversations.jsonl)")
    return p


def check_args(argv=None, world_size=None):
    """Parse the flags and check the batch arithmetic (conversations per step vs device batch x ranks), touching
    no data and no device (parse-only mode)."""
    args = build_parser().parse_args(argv)
    world_size = int(os.environ.get("WORLD_SIZE", "1")) if world_size is None else world_size
    if args.device_batch_size != "auto":  # auto: checked after the probe
        check_sft_batch(args.target_examples_per_step, args.device_batch_size, world_size)
    return args


def sft_lr_multiplier(num_iterations):
    """Linear decay from 1 to 0 over the run (as upstream), clamped to [0, 1]."""
    return lambda it: min(1.0, max(0.0, 1.0 - it / max(1, num_iterations)))


class SFTStepHook(StepHook):
    """SFT's step: batches (x, y, row_weight) from SFTLoader; each micro-batch backpropagates the sum over its rows
    of row_weight × the row's summed target loss — upstream's per-micro-batch mean / accumulation steps at the
    configured device batch, whatever the device batch now is. Logs upstream's `Step ... | Training loss` line."""
    count_targets = True

    def micro_loss(self, trainer, batch):
        x, y, row_weight = batch
        with trainer.autocast():
            token_loss = trainer.forward_model(x, y, loss_reduction="none")  # 0 where the target is ignored
        return (token_loss.view_as(y).sum(1) * row_weight).sum()

    def batch_lines(self, trainer):  # upstream's lines (the dashboard reads them), then the loss groups
        return [f"Target examples per step: {trainer.total_batch_size}", f"Device batch size: {trainer.B}",
                f"Examples per step is device_batch_size * ddp_world_size: {trainer.B * trainer.world_size}",
                f"=> Setting grad accum steps: {trainer.grad_accum_steps}",
                f"Loss weighting: micro-batches of {trainer.loader.group_size} conversations weigh the same "
                f"(the device batch size this run started with)"]

    def step_line(self, trainer, step, m):
        return (f"Step {step:05d}/{trainer.num_iterations:05d} | Training loss: {m['train_loss']:.6f}| "
                f"lrm: {m['lrm']:.6f}| num_tokens: {m['num_tokens']:,}")


def val_batch_size(device_batch_size, group_size, eval_steps):
    """Rows per validation forward: the device batch when it tiles eval_steps groups, else a common divisor."""
    if (eval_steps * group_size) % device_batch_size == 0:
        return device_batch_size
    return math.gcd(device_batch_size, group_size)


@exit_3_on_startup_oom  # OOM while loading the model: the `OOM:` line and exit 3, as inside the loop
def main(argv=None):
    args = check_args(argv)
    t_start = time.time()
    ddp, rank, _, world_size, device = compute_init(args.device_type or None)
    if args.device_batch_size != "auto":  # auto: checked after the probe below
        check_sft_batch(args.target_examples_per_step, args.device_batch_size, world_size)
    args.total_batch_size = args.target_examples_per_step  # SFT counts its batch in conversations
    if args.eval_every is None:
        args.eval_every = 50 if args.demo else 100
    if args.eval_steps is None:
        args.eval_steps = 4 if args.demo else 100
    model_tag = args.model_tag or find_largest_model(os.path.join(get_base_dir(), STAGE_DIRS[args.source]))
    source_run_id = args.source_run_id or run_id_from(args.run_id)  # this run's source model unless told otherwise
    model, tokenizer, source_meta = load_model(args.source, device, phase="train", model_tag=model_tag,
                                               step=args.source_step, run_id=source_run_id,
                                               purpose_flags=("--source_run_id", "--source_step"))
    print0(f"Loaded {args.source} model {model_tag} step {source_meta.get('step')}"
           + (f" of run {source_meta['run_id']}" if source_meta.get("run_id") else ""))
    print0(f"Vocab size: {tokenizer.get_vocab_size():,}")
    print0(f"Number of parameters: {model.num_params():,}")
    train_set = sft_mixture("train", args.demo, identity_file=args.identity_file)
    val_set = sft_mixture("test", args.demo)
    print0(f"SFT mixture: {len(train_set):,} conversations (validation {len(val_set):,})")
    num_iterations = args.num_iterations
    if num_iterations < 0:
        num_iterations = max(1, len(train_set) // args.target_examples_per_step * args.num_epochs)
        print0(f"Calculated number of iterations: {num_iterations:,}")
    optimizers = model.setup_optimizers(unembedding_lr=args.unembedding_lr, embedding_lr=args.embedding_lr,
                                        matrix_lr=args.matrix_lr, weight_decay=args.weight_decay)
    scale_initial_lr(optimizers, args.init_lr_frac)
    resolve_device_batch_size(args, model, optimizers, device, vocab_size=tokenizer.get_vocab_size(), sequences=True)
    accum = check_sft_batch(args.target_examples_per_step, args.device_batch_size, world_size)

    def make_loader(state):
        return SFTLoader(tokenizer, train_set, args.device_batch_size, accum, device, args.max_seq_len, rank,
                         world_size, state=state, group_size=args.device_batch_size)

    def evaluate(trainer, step, last):
        """Upstream's validation loss: the mean over eval_steps batches (of the run's group size) of each batch's
        mean target loss, averaged over ranks."""
        if not (last or (args.eval_every > 0 and step % args.eval_every == 0)):
            return
        group = trainer.loader.group_size
        vb = val_batch_size(args.eval_batch_size or args.device_batch_size, group, args.eval_steps)
        val = SFTLoader(tokenizer, val_set, vb, args.eval_steps * group // vb, device, args.max_seq_len, rank,
                        world_size, group_size=group)
        model.eval()
        total = torch.zeros((), dtype=torch.float64, device=device)
        with torch.no_grad():
            for _ in range(val.accum):
                x, y, w = val.next_batch()
                token_loss = trainer.eval_forward(x, y, loss_reduction="none")
                total += (token_loss.view_as(y).sum(1) * w).sum().double()
        if ddp:
            torch.distributed.all_reduce(total)
        model.train()
        trainer.record_val_loss(step, total.item() / world_size)

    trainer = Trainer(
        args=args, stage="sft", model_tag=model_tag, model=model, optimizers=optimizers, device=device,
        make_train_loader=make_loader, num_iterations=num_iterations,
        lr_multiplier=sft_lr_multiplier(num_iterations), flops_per_token=None, evaluators=[evaluate],
        muon_momentum=get_muon_momentum if args.muon_momentum_warmup else None, hook=SFTStepHook(),
        total_batch_size=args.target_examples_per_step,  # SFT counts its step in conversations
        meta={"model_config": asdict(model.config), "source": {"stage": args.source,
                                                                 "step": source_meta.get("step")},
              "init_from": {"stage": args.source, "model_tag": model_tag, "step": source_meta.get("step"),
                            "run_id": source_meta.get("run_id")}},
        user_config=vars(args), compile_model=False, grad_accum_steps=accum)
    rc = trainer.run()
    if rc == EXIT_OK:
        get_report().log("Chat SFT", [vars(args), {
            "Number of iterations": num_iterations, "Training conversations": len(train_set),
            "Last training loss": getattr(trainer, "last_train_loss", float("nan")),
            "Wall time (min)": (time.time() - t_start) / 60,
            "Peak memory (MiB)": trainer.peak_memory_mib}])
    compute_cleanup()
    return rc


if __name__ == "__main__":
    run_main(main)
