"""HumanEval (openai/openai_humaneval): write a Python function; checked by its unit tests in the sandbox."""
import re
import secrets

from nanochat.execution import execute_code
from nanochat.tasks.common import Task
from nanochat.tasks.hub import UPSTREAM_SHUFFLE_SEED, load_rows

CODE_BLOCK = re.compile(r"```(?:python|py)?\s*\n(.*?)```", re.DOTALL)


def extract_program(completion: str) -> str:
    """The code of a completion: its first fenced block if it has one, else the whole text."""
    match = CODE_BLOCK.search(completion)
    return match.group(1) if match else completion


def imports_of(prompt: str) -> str:
    return "\n".join(line for line in prompt.splitlines() if line.startswith(("import ", "from ")))


class HumanEval(Task):
    timeout_s = 5.0

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.rows = load_rows("openai/openai_humaneval", "openai_humaneval", "test", UPSTREAM_SHUFFLE_SEED)

    def num_examples(self):
        return len(self.rows)

    def get_example(self, index):
        row = self.rows[index]
        return {"messages": [{"role": "user", "content": row["prompt"]},
                             {"role": "assistant", "content": row["prompt"] + row["canonical_solution"]}],
                "entry_point": row["entry_point"], "test": row["test"], "prompt": row["prompt"]}

    def evaluate(self, conversation, completion):
        """Correct only when check() ran to completion: the program's last line prints a fresh random sentinel after
        it, so a completion that exits early (sys.exit(0), os._exit(0)) scores False, not a pass."""
        sentinel = secrets.token_hex(16)
        program = (imports_of(conversation["prompt"]) + "\n\n" + extract_program(completion) + "\n\n"
                   + conversation["test"] + "\n" + f"check({conversation['entry_point']})\n"
                   + f"print('\\n' + {sentinel!r}, flush=True)\n")
        result = execute_code(program, timeout=self.timeout_s)
        return passed(result, sentinel)


def passed(result, sentinel: str) -> bool:
    """Exit 0 and the sentinel as the last line of stdout (output nothing truncated)."""
    lines = result.stdout.rstrip("\n").splitlines()
    return bool(result.success and not result.output_truncated and lines and lines[-1] == sentinel)
