"""SFT side by side with upstream nanochat (f1683c5): the same model, tokenizer and conversations in the same order.

    python bench/sft_vs_upstream.py --mirror GITDIR --upstream_python PY [--steps 30] [--work DIR]

GITDIR is a git snapshot of karpathy/nanochat (upstream is exported with `git archive` and run, never copied); PY a
python with torch, tiktoken, rustbpe, wandb and psutil (e.g. the shared bench's upstream venv). One random d4 model is
the "mid" checkpoint both start from, with our tokenizer (at most 2,048 tokens, trained on the conversations; its
tiktoken encoding is handed to upstream as tokenizer.pkl). The SFT mixture has upstream's seven slots (ARC-E, ARC-C,
GSM8K, SmolTalk, identity, SimpleSpelling, SpellingBee) filled with offline conversations of the same kinds
(one-letter multiple-choice answers, tool calls, chat, spelling); upstream's hub tasks are replaced by list-backed
stand-ins, its in-training MMLU/ARC accuracy evaluation by a stub. Device batch 4, 8 conversations per step (2
micro-batches: the loss weighting matters), CPU, fp32. Three runs: upstream; ours; ours at B=4 until half way, then
resumed at B=2 (an OOM fallback). Prints the validation-loss series, the per-step target-token counts (equal = the
same data in the same order), and, last, `sft fidelity ours/upstream val loss at step STEPS/2 = R` (upstream trains
num_iterations - 1 steps, so the final points differ by one step and are not compared).
"""
import argparse
import json
import os
import pickle
import re
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SLOTS = ["arc_easy", "arc_challenge", "gsm8k", "smoltalk", "identity", "simple_spelling", "spelling_bee"]


def build_conversations(words):
    """{slot: [conversation]} plus the validation chats; deterministic."""
    import random

    from nanochat.tasks.demo import DemoArithmetic, DemoFirstLetter
    from nanochat.tasks.identity import BUNDLED_IDENTITY_FILE, read_conversations
    from nanochat.tasks.spelling import SimpleSpelling, SpellingBee

    def chats(n, seed):
        rng = random.Random(seed)
        topics = ["rivers", "rockets", "gardens", "python", "music", "winter", "bread", "stars", "trains", "cats"]
        out = []
        for _ in range(n):
            turns = []
            for _ in range(rng.randint(1, 3)):
                a, b = rng.sample(topics, 2)
                turns += [{"role": "user", "content": f"Tell me something about {a} and {b}."},
                          {"role": "assistant", "content": " ".join(rng.choice(words) for _ in
                                                                     range(rng.randint(5, 60))) + "."}]
            out.append({"messages": turns})
        return out

    def strip(task):
        return [{"messages": task[i]["messages"]} for i in range(len(task))]
    data = {
        "arc_easy": strip(DemoFirstLetter(words, size=60, seed=1)),
        "arc_challenge": strip(DemoFirstLetter(words, size=30, seed=2)),
        "gsm8k": strip(DemoArithmetic(size=80, seed=3)),
        "smoltalk": chats(100, 4),
        "identity": [{"messages": c["messages"]} for c in read_conversations(BUNDLED_IDENTITY_FILE)],
        "simple_spelling": strip(SimpleSpelling(size=30, words=words)),
        "spelling_bee": strip(SpellingBee(size=30, words=words)),
    }
    return data, chats(200, 5)


UPSTREAM_RUNNER = '''
import json, os, runpy, sys, types
DATA = {data!r}
from tasks.common import Task


def rows(name):
    with open(os.path.join(DATA, name + ".jsonl")) as f:
        return [json.loads(line) for line in f]


class ListTask(Task):
    def __init__(self, name, **kwargs):
        super().__init__(**kwargs)
        self.rows = rows(name)

    def num_examples(self):
        return len(self.rows)

    def get_example(self, index):
        return self.rows[index]


def module(name, **classes):
    m = types.ModuleType(name)
    m.__dict__.update(classes)
    sys.modules[name] = m


module("tasks.arc", ARC=lambda subset, split, **kw: ListTask("arc_easy" if subset == "ARC-Easy" else "arc_challenge"))
module("tasks.gsm8k", GSM8K=lambda subset, split, **kw: ListTask("gsm8k"))
module("tasks.smoltalk", SmolTalk=lambda split, stop=None, **kw: ListTask("smoltalk" if split == "train" else "val"))
module("tasks.spellingbee", SimpleSpelling=lambda size, split: ListTask("simple_spelling"),
       SpellingBee=lambda size, split: ListTask("spelling_bee"))
module("scripts.chat_eval", run_chat_eval=lambda *a, **k: 0.0)  # the in-training MMLU/ARC accuracy: not compared
sys.argv = ["chat_sft"] + sys.argv[1:]
runpy.run_module("scripts.chat_sft", run_name="__main__")
'''

OURS_RUNNER = '''
import json, os, sys
sys.path.insert(0, {repo!r})
DATA = {data!r}
from nanochat.scripts import chat_sft
from nanochat.tasks.common import TaskMixture


def rows(name):
    with open(os.path.join(DATA, name + ".jsonl")) as f:
        return [json.loads(line) for line in f]


def mixture(split, demo, identity_file=None):
    if split == "train":
        return TaskMixture([rows(s) for s in {slots!r}])
    return TaskMixture([rows("val")])


chat_sft.sft_mixture = mixture
sys.exit(chat_sft.main(sys.argv[1:]))
'''


def run(cmd, env, cwd, log):
    with open(log, "w") as f:
        proc = subprocess.run(cmd, env=env, cwd=cwd, stdout=f, stderr=subprocess.STDOUT)
    text = Path(log).read_text()
    if proc.returncode != 0:
        sys.exit(f"{cmd[1]} failed (exit {proc.returncode}), see {log}:\n{text[-2000:]}")
    return text


def series(text):
    val = {int(s): float(v) for s, v in re.findall(r"Step (\d+) \| Validation loss: ([0-9.]+)", text)}
    tokens = [int(n.replace(",", "")) for n in re.findall(r"Training loss: [^|]+\| lrm: [^|]+\| num_tokens: ([\d,]+)",
                                                          text)]
    return val, tokens


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--mirror", required=True)
    p.add_argument("--upstream_python", required=True)
    p.add_argument("--rev", default="f1683c5")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--work", default=os.path.expanduser("~/.cache/nanotui-sft-fidelity"))
    args = p.parse_args()
    if args.steps < 4 or args.steps % 2:
        sys.exit("--steps must be an even number >= 4")
    import torch

    from nanochat.checkpoint import save_checkpoint
    from nanochat.gpt import GPT, config_for_depth
    from nanochat.tasks.demo import FALLBACK_WORDS
    from nanochat.tokenizer import Tokenizer

    work = Path(args.work)
    subprocess.run(["rm", "-rf", str(work)], check=True)
    src, data = work / "upstream_src", work / "data"
    src.mkdir(parents=True)
    data.mkdir()
    archive = subprocess.run(["git", "--git-dir", args.mirror, "archive", args.rev], check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive.stdout, check=True)

    words = sorted(FALLBACK_WORDS)
    conversations, val = build_conversations(words)
    for name, rows in list(conversations.items()) + [("val", val)]:
        with open(data / f"{name}.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    texts = [m["content"] if isinstance(m["content"], str) else "".join(p["text"] for p in m["content"])
             for rows in list(conversations.values()) + [val] for r in rows for m in r["messages"]]
    tok = Tokenizer.train_from_iterator(iter(texts * 3), 2048)
    torch.manual_seed(0)
    config = config_for_depth(4, vocab_size=tok.get_vocab_size(), sequence_len=2048)
    model = GPT(config)
    model.init_weights()
    meta = {"model_config": asdict(config), "step": 0}
    for side in ("ours", "ours_fallback", "upstream"):
        base = work / side
        tok.save(str(base / "tokenizer"))
        with open(base / "tokenizer" / "tokenizer.pkl", "wb") as f:
            pickle.dump(tok.enc, f)  # upstream reads a pickled tiktoken encoding
        save_checkpoint(str(base / "mid_checkpoints" / "d4"), 0, model.state_dict(), None, dict(meta, stage="mid"),
                        quiet=True)
        (base / "identity_conversations.jsonl").write_text(  # upstream's format: one list of messages a line
            "".join(json.dumps(c["messages"]) + "\n" for c in conversations["identity"]))

    n, half = args.steps, args.steps // 2
    common = [f"--num_iterations={n}", "--device_batch_size=4", "--target_examples_per_step=8",
              f"--eval_every={half}", "--eval_steps=8"]
    env = dict(os.environ, WANDB_MODE="disabled", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"),
               PYTHONUNBUFFERED="1", NANOCHAT_NS_DTYPE="bfloat16")
    (work / "run_upstream.py").write_text(UPSTREAM_RUNNER.format(data=str(data)))
    (work / "run_ours.py").write_text(OURS_RUNNER.format(repo=str(REPO), data=str(data), slots=SLOTS))
    up = run([args.upstream_python, str(work / "run_upstream.py"), *common],
             dict(env, NANOCHAT_BASE_DIR=str(work / "upstream"), PYTHONPATH=str(src)), src, work / "upstream.log")
    ours_args = [sys.executable, str(work / "run_ours.py"), *common, "--source=mid", "--model_tag=d4",
                 "--max_seq_len=2047", "--device_type=cpu", "--run=dummy"]
    ours = run([*ours_args, "--save_every=-1"], dict(env, NANOCHAT_BASE_DIR=str(work / "ours")), REPO,
               work / "ours.log")
    # ours again, B=4 until half way, where an injected OOM stops it (exit 3), then resumed at B=2: the fallback
    fb_env = dict(env, NANOCHAT_BASE_DIR=str(work / "ours_fallback"))
    proc = subprocess.run([*ours_args, f"--save_every={half}"],
                          env=dict(fb_env, NANOCHAT_FAULT_OOM_ABOVE_BS="2", NANOCHAT_FAULT_OOM_FROM_STEP=str(half)),
                          cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    (work / "ours_fallback_1.log").write_text(proc.stdout)
    if proc.returncode != 3:
        sys.exit(f"the fallback run should stop with an OOM (exit 3), got {proc.returncode}:\n{proc.stdout[-2000:]}")
    second = run([*ours_args, "--resume_from_step=latest", "--device_batch_size=2", "--save_every=-1"], fb_env, REPO,
                 work / "ours_fallback_2.log")

    (uv, ut), (ov, ot) = series(up), series(ours)
    (fv1, ft1), (fv2, ft2) = series(proc.stdout), series(second)
    fv, ft = {**fv1, **fv2}, ft1 + ft2
    print(f"upstream {args.rev} val loss: " + " ".join(f"{s}:{v:.4f}" for s, v in sorted(uv.items())))
    print("ours val loss:            " + " ".join(f"{s}:{v:.4f}" for s, v in sorted(ov.items())))
    print("ours B=4 -> B=2 val loss: " + " ".join(f"{s}:{v:.4f}" for s, v in sorted(fv.items())))
    # upstream's loop trains num_iterations - 1 steps (it stops at the last index); ours trains num_iterations
    k = len(ut)
    print(f"targets per step identical over upstream's {k} steps: ours {ot[:k] == ut}, fallback {ft[:k] == ut} "
          f"({sum(ut):,} targets)")
    if not ({0, half} <= set(uv) and {0, half, n} <= set(ov) and n in fv):
        sys.exit("missing validation losses")
    print(f"step 0 (same weights) ours/upstream val loss = {ov[0] / uv[0]:.6f}")
    print(f"fallback/ours final val loss = {fv[n] / ov[n]:.6f}")
    print(f"sft fidelity ours/upstream val loss at step {half} = {ov[half] / uv[half]:.4f} "
          f"(ours {ov[half]:.4f}, upstream {uv[half]:.4f})")


if __name__ == "__main__":
    main()
