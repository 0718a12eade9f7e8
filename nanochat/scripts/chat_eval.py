"""Chat evaluation: ARC-E/C and MMLU by letter logits, GSM8K / HumanEval / spelling by sampling (HumanEval code runs
in the kernel sandbox of nanochat/execution.py, or is skipped with the reason where that cannot be set up), and
ChatCORE (mean accuracy centred on each task's random baseline over the tasks run). --demo: synthetic tasks."""
import torch
import torch.distributed as dist

from nanochat.checkpoint import check_run_id, load_model, run_id_from
from nanochat.common import (ArgumentParser, UsageError, compute_cleanup, compute_init, eval_autocast, print0,
                             run_main)
from nanochat.engine import Engine
from nanochat.execution import sandbox_description, sandbox_problem, set_unsafe_exec
from nanochat.report import get_report
from nanochat.trainer import nonnegative_float, nonnegative_int, positive_int

REAL_TASKS = ["ARC-Easy", "ARC-Challenge", "MMLU", "GSM8K", "HumanEval", "SpellingBee"]
SANDBOXED_TASKS = {"HumanEval"}  # tasks that execute model-written code
RANDOM_BASELINE = {"ARC-Easy": 0.25, "ARC-Challenge": 0.25, "MMLU": 0.25, "DemoFirstLetter": 0.25}


def load_task(name: str, demo: bool):
    from nanochat.tasks.demo import DEMO_EVAL_TASK_NAMES
    known = DEMO_EVAL_TASK_NAMES if demo else REAL_TASKS
    if name not in known:
        raise UsageError(f"unknown task {name!r}{' in --demo' if demo else ''}; choose from {', '.join(known)}")
    if demo:
        from nanochat.tasks.demo import demo_eval_tasks
        return demo_eval_tasks()[name]
    from nanochat.tasks.arc import ARC
    from nanochat.tasks.gsm8k import GSM8K
    from nanochat.tasks.humaneval import HumanEval
    from nanochat.tasks.mmlu import MMLU
    from nanochat.tasks.spelling import SpellingBee
    return {"ARC-Easy": lambda: ARC("ARC-Easy", "test"), "ARC-Challenge": lambda: ARC("ARC-Challenge", "test"),
            "MMLU": lambda: MMLU("all", "test"), "GSM8K": lambda: GSM8K("main", "test"),
            "HumanEval": lambda: HumanEval(), "SpellingBee": lambda: SpellingBee(size=256, split="test")}[name]()


@torch.no_grad()
def run_categorical(model, tokenizer, task, indices, batch_size, device):
    """Pick the answer letter with the highest logit after `<|assistant_start|>`; returns the number correct."""
    correct = 0
    for start in range(0, len(indices), batch_size):
        convs = [task[i] for i in indices[start:start + batch_size]]
        prompts = [tokenizer.render_for_completion(c) for c in convs]
        width = max(len(p) for p in prompts)
        pad = tokenizer.get_bos_token_id()
        x = torch.tensor([p + [pad] * (width - len(p)) for p in prompts], dtype=torch.long, device=device)
        logits = model(x)
        for row, (conv, prompt) in enumerate(zip(convs, prompts)):
            letter_ids = [tokenizer.encode(letter)[0] for letter in conv["letters"]]
            scores = logits[row, len(prompt) - 1, letter_ids]
            predicted = conv["letters"][int(scores.argmax())]
            correct += int(task.evaluate(conv, predicted))
    return correct


def run_generative(engine, tokenizer, task, indices, num_samples, max_new_tokens, temperature, top_k):
    """Sample completions; a problem counts as solved when any sample passes the task's check."""
    correct = 0
    for i in indices:
        conv = task[i]
        prompt = tokenizer.render_for_completion(conv)
        results, _ = engine.generate_batch(prompt, num_samples=num_samples, max_tokens=max_new_tokens,
                                           temperature=temperature, top_k=top_k)
        completions = [tokenizer.decode(r[len(prompt):]) for r in results]
        correct += int(any(task.evaluate(conv, c) for c in completions))
    return correct


def chatcore(accuracies: dict) -> float:
    """Mean over tasks of (accuracy - baseline) / (1 - baseline)."""
    centred = [(acc - RANDOM_BASELINE.get(name, 0.0)) / (1.0 - RANDOM_BASELINE.get(name, 0.0))
               for name, acc in accuracies.items()]
    return sum(centred) / len(centred)


def sandbox_skips(names, unsafe: bool, ddp: bool = False, device=None) -> dict:
    """{task: reason} for the tasks that would run model-written code on a machine where the sandbox cannot be set
    up (all ranks agree: one rank without it skips them everywhere). Nothing is skipped under --unsafe-exec."""
    wanted = [n for n in names if n in SANDBOXED_TASKS]
    if not wanted or unsafe:
        return {}
    problem = sandbox_problem()
    if ddp:
        flag = torch.tensor([1 if problem else 0], dtype=torch.long, device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if flag.item() and not problem:
            problem = "code sandbox unavailable on another rank"
    return {n: problem for n in wanted} if problem else {}


def build_parser():
    p = ArgumentParser(prog="python -m nanochat.scripts.chat_eval", description=__doc__)
    p.add_argument("-i", "--source", choices=["mid", "sft"], default="sft", help="which chat model")
    p.add_argument("-a", "--task_name", default=None, help="tasks separated by | (default: all)")
    p.add_argument("--model_tag", default=None)
    p.add_argument("--step", type=nonnegative_int, default=None)
    p.add_argument("--run_id", type=check_run_id, default=None,
                   help="evaluate this run's newest checkpoint (default: $NANOCHAT_RUN_ID; unset: the newest of any)")
    p.add_argument("--demo", action="store_true", help="evaluate the offline synthetic tasks")
    p.add_argument("--max_problems", type=positive_int, default=None, help="at most this many problems per task")
    p.add_argument("--batch_size", type=positive_int, default=8, help="batch of the categorical (letter) evaluation")
    p.add_argument("--num_samples", type=positive_int, default=1)
    p.add_argument("--max_new_tokens", type=positive_int, default=None)
    p.add_argument("-t", "--temperature", type=nonnegative_float, default=0.0, help="0 = greedy")
    p.add_argument("-k", "--top_k", type=positive_int, default=50)
    p.add_argument("--device_type", default="")
    p.add_argument("--unsafe-exec", "--unsafe_exec", dest="unsafe_exec", action="store_true",
                   help="run HumanEval's model-written code WITHOUT the kernel sandbox (it can read/write your files)")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    args = vars(args)
    ddp, rank, _, world_size, device = compute_init(args["device_type"] or None)
    model, tokenizer, meta = load_model(args["source"], device, phase="eval", model_tag=args["model_tag"],
                                        step=args["step"], run_id=run_id_from(args["run_id"]))
    engine = Engine(model, tokenizer)
    if args["demo"]:
        from nanochat.tasks.demo import DEMO_EVAL_TASK_NAMES
        names = list(DEMO_EVAL_TASK_NAMES)
    else:
        names = REAL_TASKS
    if args["task_name"]:
        names = args["task_name"].split("|")
    max_new = args["max_new_tokens"] or (64 if args["demo"] else 512)
    if args["unsafe_exec"]:
        set_unsafe_exec(True)
    skipped = sandbox_skips(names, args["unsafe_exec"], ddp, device)
    if any(n in SANDBOXED_TASKS for n in names) and not skipped:
        print0(f"Code execution: {sandbox_description()}")
    accuracies = {}
    for name in names:
        if name in skipped:
            print0(f"{name}: skipped ({skipped[name]})")
            continue
        task = load_task(name, args["demo"])
        n = len(task) if args["max_problems"] is None else min(len(task), args["max_problems"])
        indices = list(range(rank, n, world_size))
        with eval_autocast(device):  # bf16 on CUDA, as upstream
            if task.eval_type == "categorical":
                correct = run_categorical(model, tokenizer, task, indices, args["batch_size"], device)
            else:
                correct = run_generative(engine, tokenizer, task, indices, args["num_samples"], max_new,
                                         args["temperature"], args["top_k"])
        counts = torch.tensor([correct, len(indices)], dtype=torch.long, device=device)
        if ddp:
            dist.all_reduce(counts)
        accuracies[name] = counts[0].item() / max(1, counts[1].item())
        print0(f"{name} accuracy: {100 * accuracies[name]:.2f}% ({counts[0].item()}/{counts[1].item()})")
    results = dict(accuracies)
    results.update({name: f"skipped: {reason}" for name, reason in skipped.items()})
    if accuracies:
        results["ChatCORE"] = chatcore(accuracies)
        note = f" (over the tasks run; skipped: {', '.join(skipped)})" if skipped else ""
        print0(f"ChatCORE metric: {results['ChatCORE']:.4f}{note}")
    get_report().log(f"Chat evaluation {args['source']}", [
        f"source: {args['source']} | model_tag: {args['model_tag'] or 'default'} | step: {meta.get('step')} | "
        f"demo: {args['demo']}", results])
    compute_cleanup()
    return 0


if __name__ == "__main__":
    run_main(main)
