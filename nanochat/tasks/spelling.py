"""Spelling tasks: SimpleSpelling (spell a word out) and SpellingBee (count a letter, checked with the calculator),
from the public English word list or, offline, from any word list such as the demo corpus's vocabulary."""
from __future__ import annotations

import os
import random
import zlib

from nanochat.tasks.common import Task, extract_final_answer
from nanochat.tasks.hub import cached_file

WORDS_URL = "https://raw.githubusercontent.com/dwyl/english-words/refs/heads/master/words_alpha.txt"
COUNT_TEMPLATES = [
    "How many {letter} are in the word {word}?",
    "How many times does the letter {letter} appear in {word}?",
    "Count the letter {letter} in {word}.",
    "how many {letter}s are there in {word}",
    "In the word {word}, how many times does {letter} occur?",
]
SPELL_TEMPLATES = ["Spell the word: {word}", "Spell {word}", "How do you spell {word}?", "spell out {word}"]


def english_words() -> list[str]:
    path = cached_file(os.environ.get("NANOCHAT_WORDS_URL", WORDS_URL), "words_alpha.txt", "the English word list")
    with open(path, encoding="utf-8") as f:
        return [w.strip() for w in f if w.strip().isalpha()]


def split_words(words, split: str) -> list[str]:
    """A stable train/test partition of a word list (1 word in 10 is held out for test)."""
    held_out = [w for w in words if zlib.crc32(w.encode()) % 10 == 0]
    return held_out if split == "test" else [w for w in words if zlib.crc32(w.encode()) % 10 != 0]


def spell(word: str) -> str:
    return f"{word}:" + ",".join(word)


class _WordTask(Task):
    def __init__(self, size: int = 1000, split: str = "train", words=None, seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        assert split in ("train", "test")
        words = split_words(sorted(set(words if words is not None else english_words())), split)
        if not words:
            raise ValueError("the word list has no words for this split")
        self.words, self.size, self.split = words, size, split
        self.seed = seed + (0 if split == "train" else 10_000_019)

    def num_examples(self):
        return self.size

    def _rng(self, index):
        return random.Random(self.seed * 1_000_003 + index)


class SimpleSpelling(_WordTask):
    def get_example(self, index):
        rng = self._rng(index)
        word = rng.choice(self.words)
        return {"messages": [{"role": "user", "content": rng.choice(SPELL_TEMPLATES).format(word=word)},
                             {"role": "assistant", "content": spell(word)}]}

    def evaluate(self, conversation, completion):
        return completion.strip() == conversation["messages"][-1]["content"]


class SpellingBee(_WordTask):
    def get_example(self, index):
        rng = self._rng(index)
        word = rng.choice(self.words)
        letter = rng.choice(word) if rng.random() < 0.9 else rng.choice("abcdefghijklmnopqrstuvwxyz")
        count = word.count(letter)
        question = rng.choice(COUNT_TEMPLATES).format(letter=letter, word=word)
        answer = [
            {"type": "text", "text": f"{spell(word)}\nLet me count the {letter}s with Python: "},
            {"type": "python", "text": f"'{word}'.count('{letter}')"},
            {"type": "python_output", "text": str(count)},
            {"type": "text", "text": f"\n#### {count}"},
        ]
        return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}

    def evaluate(self, conversation, completion):
        reference = extract_final_answer(conversation["messages"][-1]["content"][-1]["text"])
        return extract_final_answer(completion) == reference
