"""Midtraining: continue the base model on the conversation mixture (chat format, tool use, multiple choice),
packed into B×T rows like pretraining, on the shared resumable trainer (checkpoints, resume, OOM, signals)."""
import math
import os
import time
from dataclasses import asdict

from nanochat.batch_probe import resolve_device_batch_size
from nanochat.checkpoint import STAGE_DIRS, check_run_id, find_largest_model, load_model, run_id_from
from nanochat.common import compute_cleanup, compute_init, get_base_dir, print0, run_main
from nanochat.loss_eval import evaluate_bpb_budget
from nanochat.optim import get_lr_multiplier
from nanochat.report import get_report
from nanochat.tasks.batching import PackedConversationLoader
from nanochat.tasks.mixtures import mid_mixture
from nanochat.tokenizer import get_token_bytes
from nanochat.trainer import (EXIT_OK, FlagParser, Trainer, add_training_flags, exit_3_on_startup_oom, float_flag,
                              positive_int)

DEMO_EVAL_TOKENS = 16_384
EPOCH_SAMPLE = 512


def build_parser():
    p = FlagParser(prog="python -m nanochat.scripts.mid_train", description=__doc__)
    # upstream's midtraining clips no gradient (--grad_clip=1.0 opts in to base training's clipping)
    add_training_flags(p, device_batch_size=32, max_seq_len=2048, total_batch_size=524288, num_iterations=-1,
                       eval_every=None, eval_tokens=None, save_every=500, grad_clip=0.0)
    p.add_argument("--demo", action="store_true", help="offline synthetic mixture (no download)")
    p.add_argument("--source_run_id", type=check_run_id, default=None,
                   help="load the source checkpoint of this run (default: this run's own id, when it has one)")
    p.add_argument("--source_step", type=positive_int, default=None, help="base checkpoint step (default: newest)")
    p.add_argument("--unembedding_lr", type=float_flag, default=0.004)
    p.add_argument("--embedding_lr", type=float_flag, default=0.2)
    p.add_argument("--matrix_lr", type=float_flag, default=0.02)
    p.add_argument("--weight_decay", type=float_flag, default=0.0)
    p.add_argument("--init_lr_frac", type=float_flag, default=1.0, help="initial LR as a fraction of the base LR")
    p.add_argument("--identity_file", default=None,
                   help="identity conversations JSONL (default: $NANOCHAT_IDENTITY_FILE or "
                        "$NANOCHAT_BASE_DIR/identity_conversations.jsonl)")
    return p


def check_args(argv=None, world_size=None):
    """Parse the flags and check the batch arithmetic, touching no data and no device (parse-only mode)."""
    from nanochat.trainer import compute_grad_accum
    args = build_parser().parse_args(argv)
    world_size = int(os.environ.get("WORLD_SIZE", "1")) if world_size is None else world_size
    if args.device_batch_size != "auto":
        compute_grad_accum(args.total_batch_size, args.device_batch_size, args.max_seq_len, world_size)
    return args


def scale_initial_lr(optimizers, frac):
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = group["initial_lr"] = group["lr"] * frac


def estimate_iterations(tokenizer, dataset, total_batch_size, max_conv_tokens):
    """One epoch of the mixture in optimizer steps, from the rendered length of a sample of conversations."""
    n = len(dataset)
    step = max(1, n // EPOCH_SAMPLE)
    lengths = [len(tokenizer.render_conversation(dataset[i], max_tokens=max_conv_tokens)[0])
               for i in range(0, n, step)]
    return max(1, math.ceil(sum(lengths) / len(lengths) * n / total_batch_size))


@exit_3_on_startup_oom  # OOM while loading the model: the `OOM:` line and exit 3, as inside the loop
def main(argv=None):
    args = check_args(argv)
    t_start = time.time()
    ddp, rank, _, world_size, device = compute_init(args.device_type or None)
    if args.eval_every is None:  # upstream: every 150 steps over 20 x 524,288 tokens; lighter in the demo
        args.eval_every = 50 if args.demo else 150
    if args.eval_tokens is None:
        args.eval_tokens = DEMO_EVAL_TOKENS if args.demo else 20 * 524288
    model_tag = args.model_tag or find_largest_model(os.path.join(get_base_dir(), STAGE_DIRS["base"]))
    source_run_id = args.source_run_id or run_id_from(args.run_id)  # this run's base model unless told otherwise
    model, tokenizer, base_meta = load_model("base", device, phase="train", model_tag=model_tag,
                                             step=args.source_step, run_id=source_run_id,
                                             purpose_flags=("--source_run_id", "--source_step"))
    print0(f"Loaded base model {model_tag} step {base_meta.get('step')}"
           + (f" of run {base_meta['run_id']}" if base_meta.get("run_id") else ""))
    print0(f"Vocab size: {tokenizer.get_vocab_size():,}")
    print0(f"Number of parameters: {model.num_params():,}")
    train_set = mid_mixture("train", args.demo, identity_file=args.identity_file)
    val_set = mid_mixture("test", args.demo)
    print0(f"Midtraining mixture: {len(train_set):,} conversations (validation {len(val_set):,})")
    optimizers = model.setup_optimizers(unembedding_lr=args.unembedding_lr, embedding_lr=args.embedding_lr,
                                        matrix_lr=args.matrix_lr, weight_decay=args.weight_decay)
    scale_initial_lr(optimizers, args.init_lr_frac)
    resolve_device_batch_size(args, model, optimizers, device, vocab_size=tokenizer.get_vocab_size(),
                              compile_model=True)
    T = args.max_seq_len
    num_iterations = args.num_iterations
    if num_iterations < 0:
        num_iterations = estimate_iterations(tokenizer, train_set, args.total_batch_size, 10 * T)
        print0(f"Calculated number of iterations from one epoch of the mixture: {num_iterations:,}")

    def make_loader(state):
        return PackedConversationLoader(tokenizer, train_set, args.device_batch_size, T, device, rank, world_size,
                                        state=state)

    token_bytes = get_token_bytes(device)

    def evaluate(trainer, step, last):
        if not (last or (args.eval_every > 0 and step % args.eval_every == 0)):
            return
        eval_bs = args.eval_batch_size or args.device_batch_size  # smaller when the auto probe said so
        model.eval()
        bpb = evaluate_bpb_budget(
            lambda x, y, **kw: trainer.eval_forward(x, y, **kw),
            lambda: iter(PackedConversationLoader(tokenizer, val_set, eval_bs, T, device, rank, world_size)),
            args.eval_tokens, eval_bs, T, token_bytes, world_size)
        model.train()
        trainer.record_val_bpb(step, bpb)

    trainer = Trainer(
        args=args, stage="mid", model_tag=model_tag, model=model, optimizers=optimizers, device=device,
        make_train_loader=make_loader, num_iterations=num_iterations,
        lr_multiplier=lambda it: get_lr_multiplier(it, num_iterations, warmdown_ratio=0.2),
        flops_per_token=model.estimate_flops(), evaluators=[evaluate],
        meta={"model_config": asdict(model.config), "source": {"stage": "base", "step": base_meta.get("step")},
              "init_from": {"stage": "base", "model_tag": model_tag, "step": base_meta.get("step"),
                            "run_id": base_meta.get("run_id")}},
        user_config=vars(args))
    rc = trainer.run()
    if rc == EXIT_OK:
        get_report().log("Midtraining", [vars(args), {
            "Number of iterations": num_iterations, "Minimum validation bpb": trainer.state.min_val_bpb,
            "Training time (min)": trainer.state.total_training_time / 60,
            "Wall time (min)": (time.time() - t_start) / 60,
            "Peak memory (MiB)": trainer.peak_memory_mib}])
    compute_cleanup()
    return rc


if __name__ == "__main__":
    run_main(main)
