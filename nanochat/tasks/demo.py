"""Offline synthetic tasks for the cpu-demo profile, built from the demo corpus's vocabulary: spelling, letter
counting and arithmetic with the calculator tool, and a small multiple-choice task. No download."""
from __future__ import annotations

import collections
import functools
import glob
import os
import random
import re

import pyarrow.parquet as pq

from nanochat.common import get_base_dir
from nanochat.tasks.common import LETTERS, Task, TaskMixture, extract_final_answer, render_multiple_choice
from nanochat.tasks.identity import IdentityConversations
from nanochat.tasks.spelling import SimpleSpelling, SpellingBee, split_words

FALLBACK_WORDS = ("apple banana cherry garden window river mountain yellow purple orange letter number python "
                  "string market silver school friend summer winter forest planet rocket simple little bottle "
                  "button coffee dinner family flower guitar hammer island jacket kitten ladder mirror needle "
                  "pencil rabbit saddle ticket turtle valley wallet zipper anchor basket candle circle copper "
                  "dragon engine falcon ginger harbor insect jungle kettle lemon marble napkin object parrot "
                  "quartz record sample tomato useful velvet wizard").split()
WORD_RE = re.compile(r"\b[a-z]{3,10}\b")


DEMO_EVAL_TASK_NAMES = ["SpellingBee", "SimpleSpelling", "DemoArithmetic", "DemoFirstLetter"]


def corpus_words(limit: int = 2000, max_chars: int = 5_000_000) -> list[str]:
    """The most frequent lowercase words of the first demo corpus shard (fallback: a built-in list)."""
    return list(_corpus_words(get_base_dir(), limit, max_chars))


@functools.lru_cache(maxsize=4)
def _corpus_words(base_dir, limit, max_chars):
    shards = sorted(glob.glob(os.path.join(base_dir, "base_data", "shard_*.parquet")))
    counts = collections.Counter()
    if shards:
        seen = 0
        for batch in pq.ParquetFile(shards[0]).iter_batches(columns=["text"], batch_size=256):
            for text in batch.column(0).to_pylist():
                counts.update(WORD_RE.findall(text))
                seen += len(text)
            if seen > max_chars:
                break
    words = [w for w, _ in counts.most_common(limit)]
    return tuple(sorted(words) if len(words) >= 50 else sorted(FALLBACK_WORDS))


class DemoArithmetic(Task):
    """Add, subtract or multiply small numbers, calling the calculator."""
    TEMPLATES = ["What is {a} {op} {b}?", "Compute {a} {op} {b}.", "{a} {op} {b} = ?", "Calculate {a}{op}{b}"]

    def __init__(self, size: int = 1000, split: str = "train", seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.size, self.seed = size, seed + (0 if split == "train" else 7_777_777)

    def num_examples(self):
        return self.size

    def get_example(self, index):
        rng = random.Random(self.seed * 1_000_003 + index)
        op = rng.choice("+-*")
        a, b = (rng.randint(2, 99), rng.randint(2, 99)) if op != "*" else (rng.randint(2, 30), rng.randint(2, 30))
        value = {"+": a + b, "-": a - b, "*": a * b}[op]
        answer = [{"type": "python", "text": f"{a}{op}{b}"}, {"type": "python_output", "text": str(value)},
                  {"type": "text", "text": f"\n#### {value}"}]
        return {"messages": [{"role": "user", "content": rng.choice(self.TEMPLATES).format(a=a, op=op, b=b)},
                             {"role": "assistant", "content": answer}]}

    def evaluate(self, conversation, completion):
        return extract_final_answer(completion) == extract_final_answer(conversation["messages"][-1]["content"][-1]["text"])


class DemoFirstLetter(Task):
    """Multiple choice: which word starts with a given letter (scored by letter logits, like ARC/MMLU)."""
    eval_type = "categorical"

    def __init__(self, words, size: int = 200, split: str = "train", seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        words = sorted(set(words))
        held = split_words(words, split)
        # four distinct initials are needed; a tiny held-out list falls back to the whole list
        self.words = held if len({w[0] for w in held}) >= 4 else words
        if len({w[0] for w in self.words}) < 4:
            raise ValueError("DemoFirstLetter needs words with at least 4 different first letters")
        self.size, self.seed = size, seed + (0 if split == "train" else 5_555_555)

    def num_examples(self):
        return self.size

    def get_example(self, index):
        rng = random.Random(self.seed * 1_000_003 + index)
        choices, initials = [], set()
        while len(choices) < 4:
            w = rng.choice(self.words)
            if w[0] not in initials:
                initials.add(w[0])
                choices.append(w)
        gold = rng.randrange(4)
        letters = list(LETTERS[:4])
        question = f"Which word starts with the letter {choices[gold][0]}?"
        return {"messages": [{"role": "user", "content": render_multiple_choice(question, letters, choices)},
                             {"role": "assistant", "content": letters[gold]}], "letters": letters}

    def evaluate(self, conversation, completion):
        return completion.strip() == conversation["messages"][-1]["content"]


def demo_mixture(split: str = "train", size: int = 2000, words=None, identity_file=None) -> TaskMixture:
    """The demo chat data: spelling, counting, arithmetic, first-letter choice and identity conversations."""
    words = words if words is not None else corpus_words()
    n = max(1, size // 4)
    tasks = [SimpleSpelling(size=n, split=split, words=words), SpellingBee(size=n, split=split, words=words),
             DemoArithmetic(size=n, split=split), DemoFirstLetter(words, size=n // 2, split=split)]
    if split == "train":
        identity = IdentityConversations(identity_file, demo=True)
        tasks += [identity] * max(1, n // (4 * max(1, len(identity))))
    return TaskMixture(tasks)


def demo_eval_tasks(words=None, size: int = 50) -> dict:
    """Evaluation tasks of the demo profile (held-out words/numbers)."""
    words = words if words is not None else corpus_words()
    return {"SpellingBee": SpellingBee(size=size, split="test", words=words),
            "SimpleSpelling": SimpleSpelling(size=size, split="test", words=words),
            "DemoArithmetic": DemoArithmetic(size=size, split="test"),
            "DemoFirstLetter": DemoFirstLetter(words, size=size, split="test")}
