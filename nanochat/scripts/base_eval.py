"""Base model evaluation: train/val bits per byte over a fixed token budget, CORE (skipped with a line when the eval
bundle is unavailable or with --demo), and greedy samples from fixed prompts. Writes two report sections."""
import time

from nanochat.checkpoint import check_run_id, load_model, run_id_from
from nanochat.common import ArgumentParser, compute_cleanup, compute_init, eval_autocast, print0, run_main
from nanochat.core_eval import EvalBundleUnavailable, download_eval_bundle, evaluate_core
from nanochat.dataloader import DataLoader
from nanochat.engine import Engine
from nanochat.loss_eval import evaluate_bpb_budget
from nanochat.report import get_report
from nanochat.tokenizer import get_token_bytes
from nanochat.trainer import nonnegative_int, positive_int, printable_sample

SAMPLE_PROMPTS = ["The capital of France is", "The chemical symbol of gold is",
                  "If yesterday was Friday, then tomorrow will be", "The opposite of hot is",
                  "The planets of the solar system are:", "My favorite color is", "If 5*x + 3 = 13, then x is"]


def build_parser():
    p = ArgumentParser(prog="python -m nanochat.scripts.base_eval", description=__doc__)
    p.add_argument("--model_tag", default=None)
    p.add_argument("--step", type=nonnegative_int, default=None)
    p.add_argument("--run_id", type=check_run_id, default=None,
                   help="evaluate this run's newest checkpoint (default: $NANOCHAT_RUN_ID; unset: the newest of any)")
    p.add_argument("--demo", action="store_true", help="small token budget, CORE skipped (offline demo)")
    p.add_argument("--eval_tokens", type=positive_int, default=None,
                   help="tokens per split for bpb (default 20 x 524,288)")
    p.add_argument("--device_batch_size", type=positive_int, default=None,
                   help="rows per forward pass (result unchanged)")
    p.add_argument("--max_per_task", type=positive_int, default=None, help="CORE: at most this many examples per task")
    p.add_argument("--skip_core", action="store_true")
    p.add_argument("--device_type", default="")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    t0 = time.time()
    ddp, rank, _, world_size, device = compute_init(args.device_type or None)
    model, tokenizer, meta = load_model("base", device, phase="eval", model_tag=args.model_tag, step=args.step,
                                        run_id=run_id_from(args.run_id))
    T = model.config.sequence_len
    B = args.device_batch_size or (8 if args.demo else 32)
    eval_tokens = args.eval_tokens or (16 * B * T if args.demo else 20 * 524288)
    token_bytes = get_token_bytes(device)
    with eval_autocast(device):  # bf16 on CUDA, as upstream
        bpb = {}
        for split in ("train", "val"):
            bpb[split] = evaluate_bpb_budget(
                model, lambda: iter(DataLoader(tokenizer, B, T, split, device, rank=rank, world_size=world_size)),
                eval_tokens, B, T, token_bytes, world_size)
            print0(f"{split} bpb: {bpb[split]:.4f}")
        engine = Engine(model, tokenizer)
        samples = []
        for prompt in SAMPLE_PROMPTS:
            ids = tokenizer.encode(prompt, prepend=tokenizer.get_bos_token_id())
            out, _ = engine.generate_batch(ids, num_samples=1, max_tokens=16, temperature=0.0)
            samples.append(tokenizer.decode(out[0][1:]))
            print0(printable_sample(samples[-1]))
        get_report().log("Base model loss", [{"train bpb": bpb["train"], "val bpb": bpb["val"],
                                              "eval tokens per split": eval_tokens},
                                             "Greedy samples:\n\n" + "\n".join(f"- {s!r}" for s in samples)])
        core = None
        if args.demo or args.skip_core:
            print0(f"CORE metric: skipped ({'--demo' if args.demo else '--skip_core'})")
        else:
            try:
                bundle = download_eval_bundle()
            except EvalBundleUnavailable as exc:
                print0(f"CORE metric: skipped ({exc})")
                bundle = None
            if bundle:
                core = evaluate_core(model, tokenizer, device, bundle, max_per_task=args.max_per_task, rank=rank,
                                     world_size=world_size, log=print0)
                print0(f"CORE metric: {core['CORE']:.4f}")
    data = [{"model_tag": args.model_tag or "", "step": meta.get("step"), "train bpb": bpb["train"],
             "val bpb": bpb["val"], "Wall time (min)": (time.time() - t0) / 60}]
    if core is not None:
        data.append({"CORE": core["CORE"], **{k: v for k, v in core["centered"].items()}})
    else:
        data.append("CORE: skipped")
    get_report().log("Base model evaluation", data)
    compute_cleanup()
    return 0


if __name__ == "__main__":
    run_main(main)
