"""Spelling tasks: SimpleSpelling (spell a word out) and SpellingBee (count a letter: spell the word, walk through it
counting by hand, check with the Python tool, answer `#### N`), over the public English word list (as upstream) or,
offline, any word list such as the demo corpus's vocabulary (then with held-out test words)."""
from __future__ import annotations

import os
import random
import zlib

from nanochat.tasks.common import Task, extract_final_answer
from nanochat.tasks.hub import cached_file

WORDS_URL = "https://raw.githubusercontent.com/dwyl/english-words/refs/heads/master/words_alpha.txt"
ALPHABET = "abcdefghijklmnopqrstuvwxyz"

# The user's question, in many phrasings and languages ({letter}/{word} may be quoted; a "?" is added half the time,
# so none of these ends with one). Kept in this order: an example's template is drawn by index.
COUNT_TEMPLATES = [
    # English
    "How many {letter} are in the word {word}",
    "How many {letter} are there in {word}",
    "How many {letter}s does {word} have",
    "How many {letter}'s are in {word}",
    "How many times does {letter} occur in {word}",
    "How many times does the letter {letter} show up in {word}",
    "How often does {letter} appear in the word {word}",
    "Count the {letter} in {word}",
    "Count the letter {letter} in the word {word}",
    "Count how many times {letter} appears in {word}",
    "Please count the occurrences of {letter} in {word}",
    "Could you count the {letter} letters in {word}",
    "Can you tell me how many {letter} are in {word}",
    "Tell me how many {letter} the word {word} contains",
    "What is the number of {letter} in {word}",
    "What's the count of the letter {letter} in {word}",
    "What is the letter count of {letter} in {word}",
    "Number of {letter} in {word}",
    "Letter {letter} in {word}: how many",
    "{word}: how many {letter}",
    "{word} contains how many {letter}",
    "In {word}, how many {letter} are there",
    "In the word {word}, count the {letter}",
    "Within {word}, how many times is {letter} used",
    "Find the number of {letter} in {word}",
    "Give me the number of times {letter} is in {word}",
    "I need the count of {letter} in {word}",
    "Quick question: how many {letter} in {word}",
    "How many occurrences of {letter} does {word} have",
    "How many instances of the letter {letter} are in {word}",
    "Determine how many {letter} appear in {word}",
    "Work out how many {letter} there are in {word}",
    # Spanish
    "¿Cuántas veces aparece la letra {letter} en {word}",
    "¿Cuántas {letter} tiene la palabra {word}",
    "Cuenta cuántas {letter} hay en {word}",
    # French
    "Combien y a-t-il de {letter} dans {word}",
    "Combien de fois la lettre {letter} apparaît-elle dans {word}",
    "Compte le nombre de {letter} dans le mot {word}",
    # German
    "Wie viele {letter} hat das Wort {word}",
    "Wie oft kommt der Buchstabe {letter} in {word} vor",
    "Zähle, wie oft {letter} in {word} steht",
    # Italian
    "Quante {letter} ci sono nella parola {word}",
    "Conta quante volte compare {letter} in {word}",
    # Portuguese
    "Quantas letras {letter} tem a palavra {word}",
    "Quantas vezes aparece {letter} em {word}",
    # Chinese
    "单词{word}里有几个{letter}",
    "{word}中字母{letter}出现了几次",
    "请数一数{word}里的{letter}",
    # Japanese
    "{word}という単語に{letter}はいくつありますか",
    "{word}の中で{letter}は何回出てきますか",
    "{word}に含まれる{letter}の数を数えて",
    # Korean
    "{word}에는 {letter}가 몇 개 있어요",
    "{word}라는 단어에서 {letter}는 몇 번 나오나요",
    "{word}에 들어 있는 {letter}의 개수를 세어 주세요",
]
QUOTES = ("", "'", '"')


def english_words() -> list[str]:
    path = cached_file(os.environ.get("NANOCHAT_WORDS_URL", WORDS_URL), "words_alpha.txt", "the English word list")
    with open(path, encoding="utf-8") as f:
        return [w.strip() for w in f if w.strip().isalpha()]


def split_words(words, split: str) -> list[str]:
    """A stable train/test partition of a small word list (1 word in 10 is held out for test); the demo's."""
    held_out = [w for w in words if zlib.crc32(w.encode()) % 10 == 0]
    return held_out if split == "test" else [w for w in words if zlib.crc32(w.encode()) % 10 != 0]


def spell(word: str) -> str:
    return f"{word}:" + ",".join(word)


class _WordTask(Task):
    """size examples drawn from a word list; example i of the train split is seeded with i, of the test split with
    -(i+1) (as upstream). With the English list both splits share the words; an explicit list (the demo) is cut
    into train and held-out test words."""

    def __init__(self, size: int = 1000, split: str = "train", words=None, **kwargs):
        super().__init__(**kwargs)
        assert split in ("train", "test")
        if words is None:
            words = english_words()
        else:
            words = split_words(sorted(set(words)), split)
        if not words:
            raise ValueError("the word list has no words for this split")
        self.words, self.size, self.split = list(words), size, split

    def num_examples(self):
        return self.size

    def _rng(self, index):
        return random.Random(index if self.split == "train" else -(index + 1))


class SimpleSpelling(_WordTask):
    """`Spell the word: apple` -> `apple:a,p,p,l,e` (words visited in their own shuffled order, seed 42)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        random.Random(42).shuffle(self.words)  # a different word order from SpellingBee's

    def get_example(self, index):
        word = self._rng(index).choice(self.words)
        return {"messages": [{"role": "user", "content": f"Spell the word: {word}"},
                             {"role": "assistant", "content": spell(word)}]}

    def evaluate(self, conversation, completion):
        return completion.strip() == conversation["messages"][-1]["content"]


def count_by_hand(word: str, letter: str) -> str:
    """The manual part of the answer: spell the word, then walk its letters keeping a running count. No space
    between a position and its letter (`3:r`), so the letter is tokenised as in the spelled-out word."""
    lines = [f"The question is how many times '{letter}' occurs in '{word}'. I will count by hand first.", "",
             "Spelled out letter by letter:", spell(word), "", f"Walking through it and counting each '{letter}':"]
    running = 0
    for position, char in enumerate(word, 1):
        if char == letter:
            running += 1
            lines.append(f"{position}:{char} <- match, count is now {running}")
        else:
            lines.append(f"{position}:{char}")
    lines += ["", f"By hand I get {running}."]
    return "\n".join(lines)


class SpellingBee(_WordTask):
    """`How many r are in strawberry?` in many phrasings and languages -> a spell-and-count walk-through, a check
    with the Python tool (`'strawberry'.count('r')`), then `#### 3`."""

    def get_example(self, index):
        rng = self._rng(index)
        word = rng.choice(self.words)
        letter = rng.choice(word) if rng.random() < 0.9 else rng.choice(ALPHABET)  # 1 in 10: maybe absent
        count = word.count(letter)
        template = rng.choice(COUNT_TEMPLATES)
        if rng.random() < 0.3:  # people in a hurry skip the shift key
            template = template.lower()
        lq, wq = rng.choice(QUOTES), rng.choice(QUOTES)
        question = template.format(letter=f"{lq}{letter}{lq}", word=f"{wq}{word}{wq}")
        if rng.random() < 0.5:
            question += "?"
        answer = [
            {"type": "text", "text": count_by_hand(word, letter)},
            {"type": "text", "text": "\n\nNow let me verify that with Python:\n\n"},
            {"type": "python", "text": f"'{word}'.count('{letter}')"},
            {"type": "python_output", "text": str(count)},
            {"type": "text", "text": f"\n\nPython agrees: {count}.\n\nThe answer is:\n\n#### {count}"},
        ]
        return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}

    def evaluate(self, conversation, completion):
        reference = extract_final_answer(conversation["messages"][-1]["content"][-1]["text"])
        return extract_final_answer(completion) == reference
