"""The data mixtures of midtraining and SFT (upstream's recipe), and their offline --demo counterparts."""
from __future__ import annotations

from nanochat.tasks.common import TaskMixture


def mid_mixture(split: str, demo: bool, identity_file: str | None = None):
    if demo:
        from nanochat.tasks.demo import demo_mixture
        return demo_mixture(split, size=4000 if split == "train" else 400, identity_file=identity_file)
    from nanochat.tasks.gsm8k import GSM8K
    from nanochat.tasks.identity import IdentityConversations
    from nanochat.tasks.mmlu import MMLU
    from nanochat.tasks.smoltalk import SmolTalk
    from nanochat.tasks.spelling import SimpleSpelling, SpellingBee
    if split == "train":
        identity = IdentityConversations(identity_file)  # first (fails before any download); listed twice
        return TaskMixture([SmolTalk("train"), MMLU("auxiliary_train", "train"), GSM8K("main", "train"),
                            identity, identity, SimpleSpelling(size=200_000, split="train"),
                            SpellingBee(size=80_000, split="train")])
    return TaskMixture([SmolTalk("test"), MMLU("all", "test", stop=5200), GSM8K("main", "test", stop=420)])


def sft_mixture(split: str, demo: bool, identity_file: str | None = None):
    if demo:
        from nanochat.tasks.demo import demo_mixture
        return demo_mixture(split, size=4000 if split == "train" else 400, identity_file=identity_file)
    from nanochat.tasks.arc import ARC
    from nanochat.tasks.gsm8k import GSM8K
    from nanochat.tasks.identity import IdentityConversations
    from nanochat.tasks.smoltalk import SmolTalk
    from nanochat.tasks.spelling import SimpleSpelling, SpellingBee
    if split == "train":
        identity = IdentityConversations(identity_file)  # first: a missing file fails before any download
        return TaskMixture([ARC("ARC-Easy", "train"), ARC("ARC-Challenge", "train"), GSM8K("main", "train"),
                            SmolTalk("train", stop=10_000), identity,
                            SimpleSpelling(size=300, split="train"), SpellingBee(size=300, split="train")])
    return TaskMixture([SmolTalk("test")])
