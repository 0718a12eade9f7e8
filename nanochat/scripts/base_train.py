"""Base pretraining: upstream nanochat's base_train flags and batch math on our resumable, checkpointing trainer.

    python -m nanochat.scripts.base_train --depth=20 --device_batch_size=4 --max_seq_len=1024
    torchrun --standalone --nproc_per_node=8 -m nanochat.scripts.base_train
"""
import json
import math
import os
from dataclasses import asdict

import torch

from nanochat.batch_probe import resolve_device_batch_size
from nanochat.common import (UsageError, autodetect_device_type, compute_cleanup, compute_init,
                             print0, run_main)
from nanochat.trainer import (FlagParser, Trainer, add_training_flags, compute_grad_accum, float_flag,
                              exit_3_on_startup_oom, int_or_disabled, positive_int, printable_sample)

SAMPLE_PROMPTS = [
    "The capital of France is",
    "The chemical symbol of gold is",
    "If yesterday was Friday, then tomorrow will be",
    "The opposite of hot is",
    "The planets of the solar system are:",
    "My favorite color is",
    "If 5*x + 3 = 13, then x is",
]


def build_parser():
    p = FlagParser(description="Pretrain the base model (resumable; see --save_every / --resume_from_step)")
    p.add_argument("--depth", type=positive_int, default=20, help="number of transformer layers (width = 64*depth)")
    p.add_argument("--target_flops", type=float_flag, default=-1.0,
                   help="derive num_iterations from a FLOPs budget (-1: off)")
    p.add_argument("--target_param_data_ratio", type=float_flag, default=20,
                   help="derive num_iterations from tokens:params (Chinchilla 20; -1: off)")
    p.add_argument("--embedding_lr", type=float_flag, default=0.2, help="AdamW lr of the embedding")
    p.add_argument("--unembedding_lr", type=float_flag, default=0.004, help="AdamW lr of the lm head")
    p.add_argument("--matrix_lr", type=float_flag, default=0.02, help="Muon lr of the block matrices")
    p.add_argument("--weight_decay", type=float_flag, default=0.0, help="AdamW weight decay")
    p.add_argument("--warmup_ratio", type=float_flag, default=0.0, help="fraction of steps of LR warmup")
    p.add_argument("--warmdown_ratio", type=float_flag, default=0.2, help="fraction of steps of LR warm-down")
    p.add_argument("--final_lr_frac", type=float_flag, default=0.0, help="final LR as a fraction of the initial")
    p.add_argument("--core_metric_every", type=int_or_disabled, default=2000, help="CORE metric every N steps (-1: off)")
    p.add_argument("--core_metric_max_per_task", type=int_or_disabled, default=500, help="examples per CORE task")
    p.add_argument("--sample_every", type=int_or_disabled, default=2000, help="print samples every N steps (-1: off)")
    add_training_flags(p)
    return p


def check_ratios(args):
    for name in ("warmup_ratio", "warmdown_ratio", "final_lr_frac"):
        value = getattr(args, name)
        if not 0.0 <= value <= 1.0:
            raise UsageError(f"--{name} must be between 0 and 1, got {value}")
    if args.warmup_ratio + args.warmdown_ratio > 1.0:
        raise UsageError("--warmup_ratio + --warmdown_ratio must not exceed 1")
    if args.grad_clip < 0:
        raise UsageError(f"--grad_clip must be >= 0 (0 disables clipping), got {args.grad_clip}")


def check_args(argv=None, world_size=None):
    """Parse the flags and check the batch arithmetic and model shape, touching no data and no device (the stage's
    parse-only mode: `python -m nanochat.stage_check nanochat.scripts.base_train ...`). Returns the args."""
    from nanochat.gpt import config_for_depth
    args = build_parser().parse_args(argv)
    check_ratios(args)
    world_size = int(os.environ.get("WORLD_SIZE", "1")) if world_size is None else world_size
    if args.data_lanes > 1 and world_size > 1:
        raise UsageError("--data_lanes is for a single process; under torchrun the ranks are the lanes")
    if args.device_batch_size != "auto":  # auto: the probe picks a batch that divides
        compute_grad_accum(args.total_batch_size, args.device_batch_size, args.max_seq_len, world_size)
    try:
        config_for_depth(args.depth)
    except ValueError as e:
        raise UsageError(f"--depth={args.depth}: {e}") from None
    return args


def compute_num_iterations(args, num_params, flops_per_token):
    """Upstream's precedence: explicit --num_iterations, else --target_flops, else --target_param_data_ratio."""
    if args.num_iterations > 0:
        n = args.num_iterations
        print0(f"Using user-provided number of iterations: {n:,}")
    elif args.target_flops > 0:
        n = round(args.target_flops / (flops_per_token * args.total_batch_size))
        print0(f"Calculated number of iterations from target FLOPs: {n:,}")
    elif args.target_param_data_ratio > 0:
        n = int(args.target_param_data_ratio * num_params) // args.total_batch_size
        print0(f"Calculated number of iterations from target data:param ratio: {n:,}")
    else:
        raise UsageError("no training horizon: set --num_iterations, --target_flops or --target_param_data_ratio")
    if n < 1:
        raise UsageError(f"the training horizon comes to {n} iterations; raise it or set --num_iterations")
    total_tokens = args.total_batch_size * n
    print0(f"Total number of training tokens: {total_tokens:,}")
    print0(f"Tokens : Params ratio: {total_tokens / num_params:.2f}")
    print0(f"Total training FLOPs estimate: {flops_per_token * total_tokens:e}")
    return n


def make_val_bpb_evaluator(args, tokenizer, token_bytes, lanes):
    from nanochat.dataloader import DataLoader
    from nanochat.loss_eval import evaluate_bpb_budget

    def evaluate(trainer, step, last):
        if args.eval_every <= 0 or not (last or step % args.eval_every == 0):
            return
        eval_bs = getattr(args, "eval_batch_size", None) or trainer.B  # smaller when the auto probe said so
        trainer.model.eval()
        try:
            def make_batches():
                if lanes > 1:
                    loader = DataLoader(tokenizer, eval_bs, trainer.T, "val", trainer.device, rank=0,
                                        world_size=lanes, lanes=list(range(lanes)))
                else:
                    loader = DataLoader(tokenizer, eval_bs, trainer.T, "val", trainer.device, rank=trainer.rank,
                                        world_size=trainer.world_size)
                while True:
                    yield loader.next_batch()
            bpb = evaluate_bpb_budget(lambda x, y, **kw: trainer.eval_forward(x, y, **kw), make_batches,
                                      args.eval_tokens, eval_bs, trainer.T, token_bytes,
                                      world_size=trainer.world_size)
        finally:
            trainer.model.train()
        trainer.record_val_bpb(step, bpb)
    return evaluate


def make_core_evaluator(args, tokenizer):
    """CORE metric via nanochat.core_eval (eval bundle fetched once; when unavailable, one skip line, then quiet)."""
    state = {"bundle": None, "skipped": False}

    def evaluate(trainer, step, last):
        every = args.core_metric_every
        if every <= 0 or state["skipped"] or not (last or (step > 0 and step % every == 0)):
            return
        try:
            from nanochat.core_eval import download_eval_bundle, evaluate_core
            if state["bundle"] is None:
                state["bundle"] = download_eval_bundle()
        except (ImportError, UsageError) as exc:
            print0(f"Step {step:05d} | CORE metric skipped: {' '.join(str(exc).split())}")
            state["skipped"] = True
            return
        trainer.model.eval()
        try:
            with trainer.autocast():
                result = evaluate_core(trainer.model, tokenizer, trainer.device, state["bundle"],
                                       max_per_task=args.core_metric_max_per_task, rank=trainer.rank,
                                       world_size=trainer.world_size, log=lambda *a, **k: None)
        finally:
            trainer.model.train()
        print0(f"Step {step:05d} | CORE metric: {result['CORE']:.4f}")
        trainer.log_metrics({"step": step, "core_metric": result["CORE"],
                             **{f"centered/{k}": v for k, v in result.get("centered", {}).items()}})
    return evaluate


def make_sample_evaluator(args, tokenizer):
    def evaluate(trainer, step, last):
        every = args.sample_every
        if every <= 0 or trainer.rank != 0 or not (last or (step > 0 and step % every == 0)):
            return
        model = trainer.model
        model.eval()
        try:
            for prompt in SAMPLE_PROMPTS:
                tokens = tokenizer.encode(prompt, prepend="<|bos|>")
                with trainer.autocast():
                    generated = list(model.generate(tokens, max_tokens=16, temperature=0))
                print0(printable_sample(tokenizer.decode(tokens + generated)))
        finally:
            model.train()
    return evaluate


@exit_3_on_startup_oom  # OOM before the loop (e.g. moving the model to the GPU): nothing to save yet
def main(argv=None):
    args = check_args(argv)
    user_config = dict(vars(args))

    from nanochat.dataloader import DataLoader
    from nanochat.dataset import require_shards
    from nanochat.gpt import GPT, config_for_depth
    from nanochat.optim import get_lr_multiplier, get_muon_momentum
    from nanochat.tokenizer import get_token_bytes, get_tokenizer

    device_type = args.device_type or autodetect_device_type()
    ddp, rank, local_rank, world_size, device = compute_init(device_type)
    try:
        lanes = args.data_lanes
        if lanes > 1 and ddp:
            raise UsageError("--data_lanes is for a single process; under torchrun the ranks are the lanes")
        if args.device_batch_size != "auto":  # auto: the probe below picks a batch that divides
            compute_grad_accum(args.total_batch_size, args.device_batch_size, args.max_seq_len, world_size)
        require_shards("train")
        require_shards("val")
        tokenizer = get_tokenizer()
        token_bytes = get_token_bytes(device=device)
        model_tag = args.model_tag or f"d{args.depth}"
        if args.resume_from_step not in (None, "latest"):  # a bad step fails before the model is built
            from nanochat.checkpoint import checkpoint_dir, plan_resume, run_id_from
            plan_resume(checkpoint_dir("base", model_tag), args.resume_from_step, run_id_from(args.run_id))

        vocab_size = tokenizer.get_vocab_size()
        print0(f"Vocab size: {vocab_size:,}")
        config = config_for_depth(args.depth, vocab_size=vocab_size, sequence_len=args.max_seq_len)
        print0(f"Model config:\n{json.dumps(asdict(config), indent=2)}")
        with torch.device("meta"):
            model = GPT(config)
        model.to_empty(device=device)
        model.init_weights()
        num_params = model.num_params()
        print0(f"Number of parameters: {num_params:,}")
        flops_per_token = model.estimate_flops()
        print0(f"Estimated FLOPs per token: {flops_per_token:e}")
        num_iterations = compute_num_iterations(args, num_params, flops_per_token)
        optimizers = model.setup_optimizers(unembedding_lr=args.unembedding_lr, embedding_lr=args.embedding_lr,
                                            matrix_lr=args.matrix_lr, weight_decay=args.weight_decay)
        resolve_device_batch_size(args, model, optimizers, device, vocab_size=vocab_size, compile_model=True)

        def make_train_loader(state):
            if lanes > 1:  # one process reading the data of `lanes` virtual ranks, micro-batch by micro-batch
                return DataLoader(tokenizer, args.device_batch_size, args.max_seq_len, "train", device, rank=0,
                                  world_size=lanes, lanes=list(range(lanes)), state=state)
            return DataLoader(tokenizer, args.device_batch_size, args.max_seq_len, "train", device, rank=rank,
                              world_size=world_size, state=state)

        def lr_multiplier(step):
            return get_lr_multiplier(step, num_iterations, args.warmup_ratio, args.warmdown_ratio,
                                     args.final_lr_frac)

        trainer = Trainer(
            args=args, stage="base", model_tag=model_tag, model=model, optimizers=optimizers, device=device,
            make_train_loader=make_train_loader, num_iterations=num_iterations, lr_multiplier=lr_multiplier,
            muon_momentum=get_muon_momentum, flops_per_token=flops_per_token, user_config=user_config,
            meta={"model_config": asdict(config), "depth": args.depth},
            evaluators=[make_val_bpb_evaluator(args, tokenizer, token_bytes, lanes),
                        make_core_evaluator(args, tokenizer), make_sample_evaluator(args, tokenizer)],
        )
        rc = trainer.run()
        if rc == 0:
            from nanochat.report import get_report
            st = trainer.state
            get_report().log("Base model training", [user_config, {
                "Number of parameters": num_params, "FLOPs per token": f"{flops_per_token:e}",
                "Number of iterations": num_iterations,
                "Training tokens": num_iterations * args.total_batch_size,
                "Minimum validation bpb": st.min_val_bpb if math.isfinite(st.min_val_bpb) else None,
                "Training time (min)": st.total_training_time / 60,
                "Peak memory (MiB)": trainer.peak_memory_mib}])
        return rc
    finally:
        compute_cleanup()


if __name__ == "__main__":
    run_main(main)
