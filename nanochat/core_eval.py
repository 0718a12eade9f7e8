"""CORE: the in-context-learning benchmark of the DCLM paper as nanochat uses it (22 tasks of multiple choice,
schema and language modelling), scored by the base model's losses; CORE = mean accuracy centred on each task's
random baseline. Also downloads and unpacks the eval bundle (cached under $BASE/eval_bundle)."""
from __future__ import annotations

import csv
import json
import os
import random
import shutil
import tempfile
import zipfile

import requests
import torch

from nanochat.common import UsageError, get_base_dir, one_line

EVAL_BUNDLE_URL = "https://karpathy-public.s3.us-west-2.amazonaws.com/eval_bundle.zip"


class EvalBundleUnavailable(UsageError):
    pass


def eval_bundle_dir() -> str:
    return os.path.join(get_base_dir(), "eval_bundle")


def download_eval_bundle(url: str | None = None) -> str:
    """The unpacked eval bundle directory (core.yaml, eval_meta_data.csv, eval_data/), downloaded once."""
    dest = eval_bundle_dir()
    if os.path.isfile(os.path.join(dest, "core.yaml")):
        return dest
    url = url or os.environ.get("NANOCHAT_EVAL_BUNDLE_URL", EVAL_BUNDLE_URL)
    with tempfile.TemporaryDirectory(dir=get_base_dir(), prefix=".eval_bundle.") as tmp:
        archive = os.path.join(tmp, "eval_bundle.zip")
        try:
            with requests.get(url, stream=True, timeout=60) as r:
                r.raise_for_status()
                with open(archive, "wb") as f:
                    for chunk in r.iter_content(1 << 20):
                        f.write(chunk)
        except requests.RequestException as exc:
            raise EvalBundleUnavailable(f"cannot download the CORE eval bundle from {url}: "
                                        f"{one_line(type(exc).__name__)}") from None
        unpacked = os.path.join(tmp, "unpacked")
        try:
            with zipfile.ZipFile(archive) as z:
                root = os.path.realpath(unpacked)
                for name in z.namelist():
                    target = os.path.realpath(os.path.join(unpacked, name))
                    if not (target == root or target.startswith(root + os.sep)):
                        raise EvalBundleUnavailable(f"eval bundle entry {name!r} escapes the archive directory")
                z.extractall(unpacked)
        except zipfile.BadZipFile as exc:
            raise EvalBundleUnavailable(f"the eval bundle from {url} is not a zip file ({exc})") from None
        inner = os.path.join(unpacked, "eval_bundle")
        source = inner if os.path.isdir(inner) else unpacked
        if not os.path.isfile(os.path.join(source, "core.yaml")):
            raise EvalBundleUnavailable(f"the eval bundle from {url} has no core.yaml")
        shutil.rmtree(dest, ignore_errors=True)
        shutil.move(source, dest)
    return dest


def load_core_tasks(bundle_dir: str) -> list[dict]:
    import yaml
    with open(os.path.join(bundle_dir, "core.yaml"), encoding="utf-8") as f:
        config = yaml.safe_load(f)
    baselines = {}
    with open(os.path.join(bundle_dir, "eval_meta_data.csv"), encoding="utf-8") as f:
        for row in csv.DictReader(f):
            baselines[row["Eval Task"]] = float(row["Random baseline"])
    tasks = []
    for t in config["icl_tasks"]:
        with open(os.path.join(bundle_dir, "eval_data", t["dataset_uri"]), encoding="utf-8") as f:
            data = [json.loads(line) for line in f if line.strip()]
        fewshot = t.get("num_fewshot", [0])
        tasks.append({"label": t["label"], "type": t["icl_task_type"], "data": data,
                      "num_fewshot": fewshot[0] if isinstance(fewshot, list) else int(fewshot),
                      "delimiter": t.get("continuation_delimiter", " "),
                      "random_baseline": baselines.get(t["label"], 0.0)})
    return tasks


CORE_SHUFFLE_SEED = 1337


def core_order(data: list, max_per_task: int | None = None) -> list:
    """A task's examples as upstream evaluates them: shuffled with random.Random(1337), then the first max_per_task."""
    data = list(data)
    random.Random(CORE_SHUFFLE_SEED).shuffle(data)
    return data if max_per_task is None or max_per_task <= 0 else data[:max_per_task]


def centred(accuracy: float, random_baseline_pct: float) -> float:
    b = 0.01 * random_baseline_pct
    return (accuracy - b) / (1.0 - b)


def _prompts(task, data, idx):
    """(token strings to score, how to score) for one example, with its few-shot context."""
    ex, delim, kind = data[idx], task["delimiter"], task["type"]
    shots = []
    if task["num_fewshot"] > 0:
        rng = random.Random(1234 + idx)
        others = [i for i in range(len(data)) if i != idx]
        shots = [data[i] for i in rng.sample(others, min(task["num_fewshot"], len(others)))]
    if kind == "multiple_choice":
        ctx = "".join(f"{s['query']}{delim}{s['choices'][s['gold']]}\n\n" for s in shots)
        return [ctx + f"{ex['query']}{delim}{c}" for c in ex["choices"]], ex["gold"]
    if kind == "schema":
        ctx = "".join(f"{s['context_options'][s['gold']]}{delim}{s['continuation']}\n\n" for s in shots)
        return [ctx + f"{opt}{delim}{ex['continuation']}" for opt in ex["context_options"]], ex["gold"]
    if kind == "language_modeling":
        # contexts are trimmed (some carry stray whitespace); the prompt without the continuation is stripped, so a
        # delimiter space is not left dangling: it belongs to the continuation's first token in the full prompt
        ctx = "".join(f"{s['context'].strip()}{delim}{s['continuation']}\n\n" for s in shots)
        without = (ctx + f"{ex['context'].strip()}{delim}").strip()
        return [without, ctx + f"{ex['context'].strip()}{delim}{ex['continuation']}"], None
    raise ValueError(f"unknown CORE task type {kind!r}")


def _common_prefix(seqs):
    n = min(len(s) for s in seqs)
    for i in range(n):
        if any(s[i] != seqs[0][i] for s in seqs):
            return i
    return n


def _common_suffix(seqs):
    return _common_prefix([s[::-1] for s in seqs])


@torch.no_grad()
def _losses_and_preds(model, rows, device):
    width = max(len(r) for r in rows)
    x = torch.zeros((len(rows), width), dtype=torch.long, device=device)
    for i, r in enumerate(rows):
        x[i, :len(r)] = torch.tensor(r, dtype=torch.long)
    logits = model(x).float()
    targets = torch.roll(x, -1, dims=1)
    losses = torch.nn.functional.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1),
                                               reduction="none").view(len(rows), width)
    return losses, logits.argmax(-1)


def evaluate_example(model, tokenizer, task, idx, device, max_seq_len=None) -> bool:
    texts, gold = _prompts(task, task["data"], idx)
    bos = tokenizer.get_bos_token_id()
    rows = [tokenizer.encode(t, prepend=bos) for t in texts]
    kind = task["type"]
    if kind == "language_modeling":
        start, end = len(rows[0]), len(rows[1])
        if rows[1][:start] != rows[0]:
            start = _common_prefix(rows)
        rows = [rows[1]]
        spans = [(start, end)]
    elif kind == "multiple_choice":
        p = _common_prefix(rows)
        spans = [(p, len(r)) for r in rows]
    else:
        s = _common_suffix(rows)
        spans = [(len(r) - s, len(r)) for r in rows]
    if max_seq_len is not None:  # only a model with a hard maximum length (our GPT's rotary table reaches 10x)
        cropped = []
        for r, (a, b) in zip(rows, spans):
            cut = max(0, len(r) - max_seq_len)  # keep the last max_seq_len tokens, the scored ones among them
            cropped.append((r[cut:], (max(1, a - cut), b - cut)))
        rows, spans = [c[0] for c in cropped], [c[1] for c in cropped]
    losses, preds = _losses_and_preds(model, rows, device)
    if kind == "language_modeling":
        a, b = spans[0]
        return bool((preds[0, a - 1:b - 1] == torch.tensor(rows[0][a:b], device=device)).all())
    mean_losses = [losses[i, a - 1:b - 1].mean().item() for i, (a, b) in enumerate(spans)]
    return min(range(len(mean_losses)), key=mean_losses.__getitem__) == gold


def evaluate_core(model, tokenizer, device, bundle_dir, max_per_task=None, max_seq_len=None, rank=0,
                  world_size=1, log=print) -> dict:
    """{"results": {label: accuracy}, "centered": {label: centred accuracy}, "CORE": mean centred}.

    As upstream: each task's examples are shuffled with random.Random(1337) before `max_per_task` keeps the first
    ones, and few-shot examples are drawn from that kept list; prompts are cropped (from the left) only when
    `max_seq_len` is given, for a model that cannot read longer sequences."""
    import torch.distributed as dist
    results, centered = {}, {}
    for task in load_core_tasks(bundle_dir):
        task = dict(task, data=core_order(task["data"], max_per_task))
        n = len(task["data"])
        correct = sum(evaluate_example(model, tokenizer, task, i, device, max_seq_len)
                      for i in range(rank, n, world_size))
        counts = torch.tensor([correct, len(range(rank, n, world_size))], dtype=torch.long, device=device)
        if world_size > 1 and dist.is_initialized():
            dist.all_reduce(counts)
        acc = counts[0].item() / max(1, counts[1].item())
        results[task["label"]] = acc
        centered[task["label"]] = centred(acc, task["random_baseline"])
        log(f"{task['label']}: accuracy {acc:.4f} | centered {centered[task['label']]:.4f}")
    core = sum(centered.values()) / max(1, len(centered))
    return {"results": results, "centered": centered, "CORE": core}
