"""Task base classes: indexable conversation sources, mixtures and sequences, multiple-choice rendering."""
from __future__ import annotations

import random
import re


class Task:
    """A list of conversations `{"messages": [...]}` with an optional slice (start, stop, step) over them.
    eval_type is "categorical" (answer = a letter scored by logits) or "generative" (sampled and checked)."""
    eval_type = "generative"

    def __init__(self, start: int = 0, stop: int | None = None, step: int = 1):
        assert start >= 0 and step >= 1
        self.start, self.stop, self.step = start, stop, step

    def num_examples(self) -> int:
        raise NotImplementedError

    def get_example(self, index: int) -> dict:
        raise NotImplementedError

    def evaluate(self, conversation: dict, completion: str) -> bool:
        raise NotImplementedError

    def __len__(self) -> int:
        stop = self.num_examples() if self.stop is None else min(self.stop, self.num_examples())
        return max(0, (stop - self.start + self.step - 1) // self.step)

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < len(self):
            raise IndexError(i)
        return self.get_example(self.start + i * self.step)


class TaskMixture:
    """Conversations of several tasks, shuffled together deterministically (a task listed twice is oversampled)."""
    def __init__(self, tasks, seed: int = 42):
        self.tasks = list(tasks)
        self.index = [(t, i) for t, task in enumerate(self.tasks) for i in range(len(task))]
        random.Random(seed).shuffle(self.index)

    def __len__(self):
        return len(self.index)

    def __getitem__(self, i):
        t, j = self.index[i]
        return self.tasks[t][j]


class TaskSequence(TaskMixture):
    """Tasks one after the other (curricula)."""
    def __init__(self, tasks):
        self.tasks = list(tasks)
        self.index = [(t, i) for t, task in enumerate(self.tasks) for i in range(len(task))]


LETTERS = "ABCDEFGHIJ"


def render_multiple_choice(question: str, letters, choices) -> str:
    """The user prompt of a multiple-choice question; the assistant answers with one letter."""
    lines = [f"Multiple Choice question: {question}"]
    lines += [f"- {choice}={letter}" for letter, choice in zip(letters, choices)]
    lines.append("\nRespond only with the letter of the correct answer.")
    return "\n".join(lines)


FINAL_ANSWER = re.compile(r"####\s*(-?[0-9][0-9,]*(?:\.[0-9]+)?)")


def extract_final_answer(text: str) -> str | None:
    """The number after `####` (GSM8K style), commas removed; None when absent."""
    match = FINAL_ANSWER.search(text)
    if not match:
        return None
    value = match.group(1).replace(",", "")
    if "." in value:
        value = value.rstrip("0").rstrip(".")
    return value
