"""MMLU (cais/mmlu): 4-way multiple choice; `auxiliary_train` for midtraining, `test`/`validation` for evaluation."""
from nanochat.tasks.common import LETTERS, Task, render_multiple_choice
from nanochat.tasks.hub import UPSTREAM_SHUFFLE_SEED, load_rows


class MMLU(Task):
    eval_type = "categorical"

    def __init__(self, subset: str = "all", split: str = "test", **kwargs):
        super().__init__(**kwargs)
        assert subset in ("all", "auxiliary_train") and split in ("train", "validation", "dev", "test")
        rows = load_rows("cais/mmlu", subset, split, UPSTREAM_SHUFFLE_SEED)
        # the auxiliary_train config nests each row under a "train" column
        self.rows = [r["train"] if "train" in r and isinstance(r["train"], dict) else r for r in rows]

    def num_examples(self):
        return len(self.rows)

    def get_example(self, index):
        row = self.rows[index]
        letters = LETTERS[:len(row["choices"])]
        return {"messages": [
            {"role": "user", "content": render_multiple_choice(row["question"], letters, row["choices"])},
            {"role": "assistant", "content": letters[row["answer"]]}],
            "letters": list(letters), "subject": row.get("subject", "")}

    def evaluate(self, conversation, completion):
        return completion.strip() == conversation["messages"][-1]["content"]
