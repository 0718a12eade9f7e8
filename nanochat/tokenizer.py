"""BPE tokenizer: rustbpe training, tiktoken encoding, special tokens, plain-JSON storage and chat rendering with loss masks."""
import base64
import copy
import json
import os

import tiktoken

from nanochat.common import UsageError, get_base_dir

# The 9 special tokens, in order; they take the top ids of the vocabulary (vocab_size - 9 ... vocab_size - 1).
SPECIAL_TOKENS = [
    "<|bos|>",             # begins every document (and every conversation)
    "<|user_start|>",
    "<|user_end|>",
    "<|assistant_start|>",
    "<|assistant_end|>",
    "<|python_start|>",    # the assistant calls the python tool
    "<|python_end|>",
    "<|output_start|>",    # the tool's output, fed back to the assistant
    "<|output_end|>",
]

# GPT-4's split pattern, except that numbers are split in groups of 1-2 digits (not 1-3): with a small vocabulary
# fewer tokens are spent on number chunks.
SPLIT_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""
)

TOKENIZER_FILE = "tokenizer.json"
TOKEN_BYTES_FILE = "token_bytes.pt"
FORMAT_VERSION = 1


class Tokenizer:
    """A byte-level BPE tokenizer backed by a tiktoken.Encoding (fast, multi-threaded batch encoding)."""

    def __init__(self, enc: tiktoken.Encoding, mergeable_ranks: dict, pattern: str, special_tokens: dict):
        self.enc = enc
        self.mergeable_ranks = mergeable_ranks
        self.pattern = pattern
        self.special_tokens = dict(special_tokens)
        self.bos_token_id = self.special_tokens["<|bos|>"]

    # ---------------------------------------------------------------------------------------------------------------
    # construction

    @classmethod
    def from_ranks(cls, mergeable_ranks: dict, pattern: str = SPLIT_PATTERN, special_tokens: dict = None):
        """Build from bytes->rank merges; specials default to the 9 SPECIAL_TOKENS right above the merges."""
        if special_tokens is None:
            offset = len(mergeable_ranks)
            special_tokens = {name: offset + i for i, name in enumerate(SPECIAL_TOKENS)}
        enc = tiktoken.Encoding(name="nanochat", pat_str=pattern, mergeable_ranks=mergeable_ranks,
                                special_tokens=special_tokens)
        return cls(enc, mergeable_ranks, pattern, special_tokens)

    @classmethod
    def train_from_iterator(cls, text_iterator, vocab_size: int):
        """Train BPE with rustbpe on an iterator of strings; vocab_size counts the 9 special tokens."""
        import rustbpe

        min_vocab = 256 + len(SPECIAL_TOKENS)
        if vocab_size < min_vocab:
            raise UsageError(f"vocab_size must be at least {min_vocab} (256 bytes + {len(SPECIAL_TOKENS)} special "
                             f"tokens), got {vocab_size}")
        trainer = rustbpe.Tokenizer()
        trainer.train_from_iterator(text_iterator, vocab_size - len(SPECIAL_TOKENS), pattern=SPLIT_PATTERN)
        ranks = {bytes(k): int(v) for k, v in trainer.get_mergeable_ranks()}
        return cls.from_ranks(ranks, trainer.get_pattern())

    @classmethod
    def from_directory(cls, directory: str):
        """Load `directory/tokenizer.json` (written by save())."""
        path = os.path.join(directory, TOKENIZER_FILE)
        with open(path, "r", encoding="utf-8") as f:
            data = json.load(f)
        if data.get("format") != "nanochat-tokenizer" or "mergeable_ranks" not in data:
            raise UsageError(f"{path} is not a nanochat tokenizer file; retrain with python -m nanochat.scripts.tok_train")
        ranks = {base64.b64decode(token): int(rank) for token, rank in data["mergeable_ranks"].items()}
        specials = {name: int(i) for name, i in data["special_tokens"].items()}
        return cls.from_ranks(ranks, data["pattern"], specials)

    def to_json_dict(self) -> dict:
        """The plain-JSON form of this tokenizer (no pickle anywhere)."""
        ranks = sorted(self.mergeable_ranks.items(), key=lambda kv: kv[1])
        return {
            "format": "nanochat-tokenizer",
            "version": FORMAT_VERSION,
            "pattern": self.pattern,
            "vocab_size": self.get_vocab_size(),
            "special_tokens": self.special_tokens,
            "mergeable_ranks": {base64.b64encode(token).decode("ascii"): rank for token, rank in ranks},
        }

    def save(self, directory: str) -> str:
        """Write `directory/tokenizer.json` atomically; returns its path."""
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, TOKENIZER_FILE)
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(self.to_json_dict(), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return path

    # ---------------------------------------------------------------------------------------------------------------
    # vocabulary

    def get_vocab_size(self) -> int:
        return self.enc.n_vocab

    def get_special_tokens(self) -> set:
        return set(self.special_tokens)

    def get_bos_token_id(self) -> int:
        return self.bos_token_id

    def encode_special(self, name: str) -> int:
        try:
            return self.special_tokens[name]
        except KeyError:
            raise KeyError(f"unknown special token {name!r}; known: {', '.join(SPECIAL_TOKENS)}") from None

    def id_to_token(self, token_id: int) -> str:
        return self.enc.decode([token_id])

    def token_byte_lengths(self) -> list:
        """UTF-8 byte length of every token id (0 for special tokens): the denominator of bits per byte."""
        specials = set(self.special_tokens.values())
        return [0 if i in specials else len(self.enc.decode_single_token_bytes(i))
                for i in range(self.get_vocab_size())]

    def save_token_bytes(self, directory: str) -> str:
        """Write `directory/token_bytes.pt`: a plain int64 tensor (weights_only-loadable)."""
        import torch

        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, TOKEN_BYTES_FILE)
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "wb") as f:
            torch.save(torch.tensor(self.token_byte_lengths(), dtype=torch.int64), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return path

    # ---------------------------------------------------------------------------------------------------------------
    # encoding

    def _resolve(self, token):
        if token is None or isinstance(token, int):
            return token
        return self.encode_special(token)

    def encode(self, text, prepend=None, append=None, num_threads: int = 4):
        """Encode a string (-> list of ids) or a list of strings (-> list of lists, threaded).

        prepend/append: a token id or a special-token name added to each sequence. Special-token text inside
        `text` is encoded as ordinary text, never as a special token.
        """
        prepend_id, append_id = self._resolve(prepend), self._resolve(append)
        if isinstance(text, str):
            ids = self.enc.encode_ordinary(text)
            if prepend_id is not None:
                ids.insert(0, prepend_id)
            if append_id is not None:
                ids.append(append_id)
            return ids
        if not isinstance(text, (list, tuple)):
            raise TypeError(f"encode expects a str or a list of str, got {type(text).__name__}")
        batch = self.enc.encode_ordinary_batch(list(text), num_threads=num_threads)
        if prepend_id is not None:
            batch = [[prepend_id] + ids for ids in batch]
        if append_id is not None:
            for ids in batch:
                ids.append(append_id)
        return batch

    def __call__(self, *args, **kwargs):
        return self.encode(*args, **kwargs)

    def decode(self, ids) -> str:
        return self.enc.decode(list(ids))

    # ---------------------------------------------------------------------------------------------------------------
    # chat rendering

    def render_conversation(self, conversation: dict, max_tokens: int = 2048):
        """Render {"messages": [...]} to (ids, mask); mask 1 marks the assistant tokens to train on.

        Format: <|bos|> then alternating <|user_start|>..<|user_end|> and <|assistant_start|>..<|assistant_end|>.
        A leading system message is merged into the first user message. Assistant content is a string or a list
        of parts {"type": "text"|"python"|"python_output", "text": ...}; python parts are wrapped in
        <|python_start|>..<|python_end|> (trained on), python_output parts in <|output_start|>..<|output_end|>
        (not trained on: the tool produces them at inference time). Truncated to max_tokens.
        """
        messages = _merge_system_message(conversation["messages"])
        ids, mask = [], []

        def add(token_ids, train):
            if isinstance(token_ids, int):
                token_ids = [token_ids]
            ids.extend(token_ids)
            mask.extend([1 if train else 0] * len(token_ids))

        sp = self.special_tokens
        add(sp["<|bos|>"], False)
        for i, message in enumerate(messages):
            role = message.get("role")
            expected = "user" if i % 2 == 0 else "assistant"
            if role != expected:
                raise ValueError(f"message {i} has role {role!r}; expected {expected!r} "
                                 f"(conversations alternate user/assistant, starting with user)")
            content = message.get("content")
            if role == "user":
                if not isinstance(content, str):
                    raise ValueError(f"user message {i} must have string content")
                add(sp["<|user_start|>"], False)
                add(self.encode(content), False)
                add(sp["<|user_end|>"], False)
                continue
            add(sp["<|assistant_start|>"], False)
            if isinstance(content, str):
                add(self.encode(content), True)
            elif isinstance(content, list):
                for part in content:
                    kind, text = part.get("type"), part.get("text", "")
                    if kind == "text":
                        add(self.encode(text), True)
                    elif kind == "python":
                        add(sp["<|python_start|>"], True)
                        add(self.encode(text), True)
                        add(sp["<|python_end|>"], True)
                    elif kind == "python_output":
                        add(sp["<|output_start|>"], False)
                        add(self.encode(text), False)
                        add(sp["<|output_end|>"], False)
                    else:
                        raise ValueError(f"unknown assistant content part type {kind!r}")
            else:
                raise ValueError(f"assistant message {i} content must be a string or a list of parts")
            add(sp["<|assistant_end|>"], True)
        return ids[:max_tokens], mask[:max_tokens]

    def render_for_completion(self, conversation: dict):
        """Ids that prompt the assistant's reply: the conversation minus its last (assistant) message,
        followed by <|assistant_start|>."""
        conversation = copy.deepcopy(conversation)
        messages = conversation["messages"]
        if not messages or messages[-1].get("role") != "assistant":
            raise ValueError("render_for_completion expects a conversation that ends with an assistant message")
        messages.pop()
        ids, _ = self.render_conversation(conversation, max_tokens=10**9)
        ids.append(self.special_tokens["<|assistant_start|>"])
        return ids

    def visualize_tokenization(self, ids, mask) -> str:
        """Debug view: each token with its mask bit, e.g. `'Hello'|1`."""
        return " ".join(f"{self.id_to_token(i)!r}|{m}" for i, m in zip(ids, mask))


class TextStream:
    """Sampled token ids in, text out only once it is whole UTF-8: a character split over byte tokens is held back
    until its last byte arrives (at most 4 tokens, so bytes that never make a character still come out, as U+FFFD)."""

    HOLD = 4  # the longest UTF-8 character

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.pending: list[int] = []

    def push(self, token: int) -> str:
        """The text that token completes ("" while a character is still incomplete)."""
        self.pending.append(token)
        text = self.tokenizer.decode(self.pending)
        if text.endswith("\ufffd") and len(self.pending) < self.HOLD:
            return ""
        self.pending = []
        return text


def _merge_system_message(messages):
    """Fold a leading system message into the first user message (the chat format has no system role)."""
    if not messages or messages[0].get("role") != "system":
        return list(messages)
    if len(messages) < 2 or messages[1].get("role") != "user":
        raise ValueError("a system message must be followed by a user message")
    merged = dict(messages[1])
    merged["content"] = messages[0]["content"] + "\n\n" + messages[1]["content"]
    return [merged] + list(messages[2:])


# -------------------------------------------------------------------------------------------------------------------
# the trained tokenizer of this base directory

def get_tokenizer_dir() -> str:
    return os.path.join(get_base_dir(), "tokenizer")


def get_tokenizer() -> Tokenizer:
    """The tokenizer trained into $NANOCHAT_BASE_DIR/tokenizer; UsageError naming the fix when it is missing."""
    directory = get_tokenizer_dir()
    if not os.path.isfile(os.path.join(directory, TOKENIZER_FILE)):
        raise UsageError(f"no tokenizer in {directory}; train one first: python -m nanochat.scripts.tok_train")
    try:
        return Tokenizer.from_directory(directory)
    except (ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"tokenizer in {directory} is unreadable ({exc}); retrain it: "
                         f"python -m nanochat.scripts.tok_train")


def get_token_bytes(device="cpu"):
    """LongTensor[vocab] of UTF-8 byte lengths per token id (0 for specials), from $BASE/tokenizer/token_bytes.pt."""
    import torch

    path = os.path.join(get_tokenizer_dir(), TOKEN_BYTES_FILE)
    if not os.path.isfile(path):
        raise UsageError(f"no {TOKEN_BYTES_FILE} in {os.path.dirname(path)}; train the tokenizer first: "
                         f"python -m nanochat.scripts.tok_train")
    with open(path, "rb") as f:
        token_bytes = torch.load(f, map_location="cpu", weights_only=True)
    return token_bytes.to(device)
