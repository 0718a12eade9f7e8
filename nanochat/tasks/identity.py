"""Identity conversations (who the model is) from a JSONL file, one JSON list of alternating user/assistant messages
per line: upstream's downloaded set in $NANOCHAT_BASE_DIR, the user's own file, or the small bundled set (demo)."""
import json
import os

from nanochat.common import UsageError, get_base_dir
from nanochat.tasks.common import Task

IDENTITY_FILE_ENV = "NANOCHAT_IDENTITY_FILE"
IDENTITY_FILENAME = "identity_conversations.jsonl"
BUNDLED_IDENTITY_FILE = os.path.join(os.path.dirname(os.path.dirname(__file__)), "data", IDENTITY_FILENAME)


def downloaded_identity_file() -> str:
    """Where `python -m nanochat.dataset --identity` puts upstream's identity conversations (as upstream's speedrun)."""
    return os.path.join(get_base_dir(), IDENTITY_FILENAME)


def identity_file(path: str | None = None, demo: bool = False) -> str:
    """The file to read: `path` (a flag), else $NANOCHAT_IDENTITY_FILE, else the bundled set for the offline demo or
    the downloaded one for real runs."""
    return path or os.environ.get(IDENTITY_FILE_ENV) or (BUNDLED_IDENTITY_FILE if demo else downloaded_identity_file())


def parse_conversation(line: str):
    """One JSONL line -> list of messages; ValueError saying what is wrong (a list of >= 2 messages alternating
    user/assistant, each with string content; a `{"messages": [...]}` object is accepted too)."""
    messages = json.loads(line)
    if isinstance(messages, dict) and "messages" in messages:
        messages = messages["messages"]
    if not isinstance(messages, list) or len(messages) < 2:
        raise ValueError("expected a JSON list of at least two messages")
    for i, message in enumerate(messages):
        expected = "user" if i % 2 == 0 else "assistant"
        if not isinstance(message, dict) or message.get("role") != expected:
            raise ValueError(f"message {i} must have role {expected!r}")
        if not isinstance(message.get("content"), str):
            raise ValueError(f"message {i} must have string content")
    return messages


def read_conversations(path: str) -> list:
    """All conversations of a JSONL file; UsageError (one line: file, line number, problem) when unreadable."""
    conversations = []
    try:
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    conversations.append({"messages": parse_conversation(line)})
                except ValueError as exc:
                    raise UsageError(f"identity conversations {path}, line {lineno}: {exc}") from None
    except OSError as exc:
        raise UsageError(f"cannot read identity conversations {path}: {exc.strerror or exc}") from None
    return conversations


class IdentityConversations(Task):
    def __init__(self, path: str | None = None, demo: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.path = identity_file(path, demo)
        if not os.path.exists(self.path):
            raise UsageError(f"no identity conversations at {self.path}: download upstream's set with `python -m "
                             f"nanochat.dataset --identity`, or pass --identity_file (or {IDENTITY_FILE_ENV}) "
                             f"pointing to your own JSONL")
        self.conversations = read_conversations(self.path)
        if not self.conversations:
            raise UsageError(f"identity conversations {self.path} holds no conversation")

    def num_examples(self):
        return len(self.conversations)

    def get_example(self, index):
        return self.conversations[index]
