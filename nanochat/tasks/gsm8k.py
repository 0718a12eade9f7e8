"""GSM8K (openai/gsm8k, main): math word problems; `<<expr=result>>` spans become calculator tool calls."""
import re

from nanochat.tasks.common import Task, extract_final_answer
from nanochat.tasks.hub import UPSTREAM_SHUFFLE_SEED, load_rows

CALC_SPAN = re.compile(r"<<([^>]*)>>")


def answer_to_parts(answer: str) -> list[dict]:
    """Split a GSM8K solution into text / python / python_output parts."""
    parts, pos = [], 0
    for match in CALC_SPAN.finditer(answer):
        if match.start() > pos:
            parts.append({"type": "text", "text": answer[pos:match.start()]})
        expr, _, result = match.group(1).rpartition("=")
        if expr:
            parts.append({"type": "python", "text": expr})
            parts.append({"type": "python_output", "text": result})
        pos = match.end()
    if pos < len(answer):
        parts.append({"type": "text", "text": answer[pos:]})
    return parts


class GSM8K(Task):
    def __init__(self, subset: str = "main", split: str = "test", **kwargs):
        super().__init__(**kwargs)
        assert split in ("train", "test")
        self.rows = load_rows("openai/gsm8k", subset, split, UPSTREAM_SHUFFLE_SEED)

    def num_examples(self):
        return len(self.rows)

    def get_example(self, index):
        row = self.rows[index]
        return {"messages": [{"role": "user", "content": row["question"]},
                             {"role": "assistant", "content": answer_to_parts(row["answer"])}]}

    def evaluate(self, conversation, completion):
        parts = conversation["messages"][-1]["content"]
        reference = extract_final_answer("".join(p["text"] for p in parts if p["type"] == "text"))
        return reference is not None and extract_final_answer(completion) == reference
