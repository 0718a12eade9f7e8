"""SmolTalk (HuggingFaceTB/smol-smoltalk): general chat conversations for midtraining and SFT."""
from nanochat.tasks.common import Task
from nanochat.tasks.hub import UPSTREAM_SHUFFLE_SEED, load_rows


class SmolTalk(Task):
    def __init__(self, split: str = "train", **kwargs):
        super().__init__(**kwargs)
        assert split in ("train", "test")
        self.rows = load_rows("HuggingFaceTB/smol-smoltalk", "default", split, UPSTREAM_SHUFFLE_SEED)

    def num_examples(self):
        return len(self.rows)

    def get_example(self, index):
        messages = [{"role": m["role"], "content": m["content"]} for m in self.rows[index]["messages"]]
        return {"messages": messages}
