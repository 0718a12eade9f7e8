"""Identity conversations: who the model is, from a JSONL file (one JSON list of messages per line)."""
import json
import os

from nanochat.common import UsageError
from nanochat.tasks.common import Task

DEFAULT_IDENTITY_FILE = os.path.join(os.path.dirname(os.path.dirname(__file__)), "data",
                                     "identity_conversations.jsonl")


class IdentityConversations(Task):
    def __init__(self, path: str | None = None, **kwargs):
        super().__init__(**kwargs)
        self.path = path or os.environ.get("NANOCHAT_IDENTITY_FILE") or DEFAULT_IDENTITY_FILE
        self.conversations = []
        try:
            with open(self.path, encoding="utf-8") as f:
                for lineno, line in enumerate(f, 1):
                    if line.strip():
                        messages = json.loads(line)
                        if isinstance(messages, dict):
                            messages = messages["messages"]
                        self.conversations.append({"messages": messages})
        except (OSError, ValueError, KeyError) as exc:
            raise UsageError(f"cannot read identity conversations {self.path}: {exc}") from None

    def num_examples(self):
        return len(self.conversations)

    def get_example(self, index):
        return self.conversations[index]
