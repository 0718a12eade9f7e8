"""ARC (allenai/ai2_arc) Easy and Challenge: grade-school science multiple choice, scored by letter logits."""
from nanochat.tasks.common import Task, render_multiple_choice
from nanochat.tasks.hub import UPSTREAM_SHUFFLE_SEED, load_rows


class ARC(Task):
    eval_type = "categorical"

    def __init__(self, subset: str = "ARC-Easy", split: str = "test", **kwargs):
        super().__init__(**kwargs)
        assert subset in ("ARC-Easy", "ARC-Challenge") and split in ("train", "validation", "test")
        self.rows = load_rows("allenai/ai2_arc", subset, split, UPSTREAM_SHUFFLE_SEED)

    def num_examples(self):
        return len(self.rows)

    def get_example(self, index):
        row = self.rows[index]
        letters, texts = list(row["choices"]["label"]), list(row["choices"]["text"])
        return {"messages": [
            {"role": "user", "content": render_multiple_choice(row["question"], letters, texts)},
            {"role": "assistant", "content": row["answerKey"]}], "letters": letters}

    def evaluate(self, conversation, completion):
        return completion.strip() == conversation["messages"][-1]["content"]
